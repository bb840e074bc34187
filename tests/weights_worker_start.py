"""A worker's start as far as its weights go, in a process of its own, for the lock tests.

    python tests/weights_worker_start.py MODEL_DIR HUB_URL STALE_S REFRESH_S WAIT_S

Finds or fetches the checkpoint, then the LoRA, into MODEL_DIR, as WanS2VBackend.load does, with
the lock's timings shortened so that a test can watch a takeover. Prints one JSON line: the paths,
or {"error": ...} (exit status 3) when the weights are unavailable.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from model import weights
from model.base import ModelUnavailableError
from model.wan_s2v.declaration import CHECKPOINT_WEIGHTS, LORA_FILE, LORA_WEIGHTS


def main() -> int:
    model_dir, hub_url = Path(sys.argv[1]), sys.argv[2]
    weights.LOCK_STALE_SECONDS, weights.LOCK_REFRESH_SECONDS, wait_seconds = map(float, sys.argv[3:6])
    weights.LOCK_POLL_SECONDS = 0.05
    weights.WAIT_LOG_INTERVAL_SECONDS = 0.5
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    nowhere = model_dir.parent / "nowhere"  # no RunPod cache, no baked copy
    try:
        folder = weights.ensure(
            CHECKPOINT_WEIGHTS, model_dir, nowhere, nowhere, endpoint=hub_url, wait_seconds=wait_seconds
        )
        lora = weights.ensure(LORA_WEIGHTS, model_dir, nowhere, nowhere, endpoint=hub_url, wait_seconds=wait_seconds)
    except ModelUnavailableError as error:
        print(json.dumps({"error": str(error)}))
        return 3
    print(json.dumps({"weights": str(folder), "lora": str(lora / LORA_FILE)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
