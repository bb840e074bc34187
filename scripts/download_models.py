"""Download the weights the worker reads, e.g. while building the image: the Wan2.2-S2V-14B
checkpoint (about 49 GB) and the Live Avatar LoRA of the fast mode (one file).

    python scripts/download_models.py                 # into /models/Wan2.2-S2V-14B and /models/Live-Avatar,
                                                      # where the worker looks
    python scripts/download_models.py --target DIR    # both into DIR (then point MODEL_DIR at DIR)
    python scripts/download_models.py --no-lora       # the checkpoint alone (no fast mode)

Set HF_TOKEN for authenticated (faster, not rate-limited) downloads. Run again after an interruption:
the download resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.wan_s2v.config import LORA_FILE, LORA_REPO_ID  # noqa: E402
from model.wan_s2v.weights import (  # noqa: E402
    IMAGE_LORA_DIR,
    IMAGE_WEIGHTS_DIR,
    REPO_ID,
    download_lora,
    download_weights,
    missing_files,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, help=f"folder for the checkpoint and the LoRA (default {IMAGE_WEIGHTS_DIR} "
                        f"and {IMAGE_LORA_DIR})")
    parser.add_argument("--no-lora", action="store_true", help=f"skip the Live Avatar LoRA ({LORA_REPO_ID})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    weights_target = args.target or IMAGE_WEIGHTS_DIR
    download_weights(weights_target)
    missing = missing_files(weights_target)
    if missing:
        print(f"the download of {REPO_ID} into {weights_target} is incomplete: {', '.join(missing)} missing", file=sys.stderr)
        return 1
    print(f"{REPO_ID} is complete in {weights_target}")
    if args.no_lora:
        return 0

    lora_target = args.target or IMAGE_LORA_DIR
    download_lora(lora_target)
    if not (lora_target / LORA_FILE).is_file():
        print(f"the download of {LORA_REPO_ID} into {lora_target} ended without {LORA_FILE}", file=sys.stderr)
        return 1
    print(f"{LORA_FILE} of {LORA_REPO_ID} is in {lora_target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
