"""Download the Wan2.2-S2V-14B weights the worker reads (about 49 GB), e.g. while building the image.

    python scripts/download_models.py                 # into /models/Wan2.2-S2V-14B, where the worker looks
    python scripts/download_models.py --target DIR    # anywhere else (then point MODEL_DIR at DIR)

Set HF_TOKEN for authenticated (faster, not rate-limited) downloads. Run again after an interruption:
the download resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.wan_s2v.weights import IMAGE_WEIGHTS_DIR, REPO_ID, download_weights, missing_files  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, default=IMAGE_WEIGHTS_DIR, help=f"folder for the weights (default {IMAGE_WEIGHTS_DIR})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    download_weights(args.target)
    missing = missing_files(args.target)
    if missing:
        print(f"the download of {REPO_ID} into {args.target} is incomplete: {', '.join(missing)} missing", file=sys.stderr)
        return 1
    print(f"{REPO_ID} is complete in {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
