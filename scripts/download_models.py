"""Fetch the weights the worker reads into a models folder: the Wan2.2-S2V-14B checkpoint (about
49 GB) into DIR/Wan2.2-S2V-14B and the Live Avatar LoRA of the fast mode (one 1.3 GB file) into
DIR/Live-Avatar, exactly as a worker with MODEL_DIR=DIR fetches them at its first start.

    python scripts/download_models.py                                 # into /models, the image's folder
                                                                      # (the Dockerfile's `baked` stage)
    python scripts/download_models.py --model-dir /workspace/models   # fill a network volume, once, from
                                                                      # a pod (pods mount it at /workspace,
                                                                      # workers at /runpod-volume)
    python scripts/download_models.py --no-lora                       # the checkpoint alone (no fast mode)

It takes the same lock as the workers, so it can run while workers start on the same volume:
whichever comes first downloads, the others wait and then use the finished files. Each folder
gets its finished-marker last. Set HF_TOKEN for authenticated (faster, not rate-limited)
downloads. Run it again after an interruption: files already fetched are kept.
Exit status: 0 done, 1 the download failed (the message says why and what to do).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model.wan_s2v.config import LORA_FILE, LORA_REPO_ID
from model.wan_s2v.weights import (
    IMAGE_MODEL_DIR,
    REPO_ID,
    download_lora_into,
    download_weights_into,
    failure_reason,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model-dir", type=Path, default=IMAGE_MODEL_DIR,
        help=f"the worker's MODEL_DIR to fill (default {IMAGE_MODEL_DIR}, where the image's worker looks)",
    )
    parser.add_argument("--no-lora", action="store_true", help=f"skip the Live Avatar LoRA ({LORA_REPO_ID})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    downloads = [(REPO_ID, download_weights_into)]
    if not args.no_lora:
        downloads.append((f"{LORA_FILE} of {LORA_REPO_ID}", download_lora_into))
    for what, download_into in downloads:
        try:
            folder = download_into(args.model_dir)
        except Exception as error:  # noqa: BLE001 - reported, with its type, instead of a traceback
            print(f"error: fetching {what} into {args.model_dir} failed: {failure_reason(error)}\n"
                  "Run the same command again to resume; check HF_TOKEN, the network and free disk space.",
                  file=sys.stderr)
            return 1
        print(f"{what} is complete in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
