"""Convert the umT5 text encoder's official file in FOLDER into safetensors shards and their index.

    python scripts/shard_text_encoder.py /models/Wan2.2-S2V-14B --shards 3

FOLDER holds `models_t5_umt5-xxl-enc-bf16.pth` (model/wan_common/config.py, T5_CHECKPOINT_FILE);
the shards and `models_t5_umt5-xxl-enc-bf16.safetensors.index.json` are written beside it, with
the file's tensor names, dtypes and values, and the worker loads them instead of the `.pth`
(model/wan_common/text.py). The Dockerfile's `baked` stage takes only these, one layer per shard:
the single 11.4 GB file is over the layer size registries accept (GHCR: 10 GB). The `.pth` is
left where it is. Exit status: 0 done, 1 no such file or it cannot be split so, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.wan_common.checkpoint import read_pth, write_safetensors_shards
from model.wan_common.config import T5_CHECKPOINT_FILE
from model.wan_common.convert_t5 import sharded_weights_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help=f"the checkpoint folder that holds {T5_CHECKPOINT_FILE}")
    parser.add_argument("--shards", type=int, required=True, help="how many files of about equal size to write")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards must be 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint = args.folder / T5_CHECKPOINT_FILE
    if not checkpoint.is_file():
        print(f"error: {checkpoint} is not there; fetch it first (scripts/download_models.py --only "
              f"{T5_CHECKPOINT_FILE})", file=sys.stderr)
        return 1
    try:
        files = write_safetensors_shards(list(read_pth(checkpoint)), args.folder,
                                         sharded_weights_name(T5_CHECKPOINT_FILE), args.shards)
    except ValueError as error:
        print(f"error: {checkpoint}: {error}; ask for fewer shards", file=sys.stderr)
        return 1
    for file in files:
        print(f"{file}: {file.stat().st_size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
