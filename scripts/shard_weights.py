"""Split one weights file into safetensors shards and their index, beside it.

    python scripts/shard_weights.py /models/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc-bf16.pth --shards 3
    python scripts/shard_weights.py /models/InfiniteTalk/single/infinitetalk.safetensors --shards 2

FILE is a `torch.save` file (`.pth`) or a safetensors file. The shards are named as
huggingface_hub names a sharded file (`STEM-00001-of-00003.safetensors`, the index
`STEM.safetensors.index.json`), with the file's tensor names, dtypes and values; the worker reads
them in its place (model/wan_common/checkpoint.py, read_safetensors). The Dockerfile's baked
stages take only these, one layer per shard: a single file over 10 GB (umT5's 11.4 GB `.pth`, and
possibly InfiniteTalk's audio weights) is over the layer size registries accept (GHCR: 10 GB).
FILE is left where it is. Exit status: 0 done, 1 no such file or it cannot be split so, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.wan_common.checkpoint import read_pth, read_safetensors, write_safetensors_shards
from model.wan_common.config import sharded_weights_name

READERS = {".pth": lambda path: read_pth(path), ".safetensors": lambda path: read_safetensors(path.parent, path.name)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help=f"the weights file to split ({' or '.join(READERS)})")
    parser.add_argument("--shards", type=int, required=True, help="how many files of about equal size to write")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards must be 1 or more")
    if args.file.suffix not in READERS:
        parser.error(f"{args.file}: give a {' or '.join(READERS)} file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    file: Path = args.file
    if not file.is_file():
        print(f"error: {file} is not there; fetch it first (scripts/download_models.py --only {file.name})",
              file=sys.stderr)
        return 1
    try:
        shards = write_safetensors_shards(list(READERS[file.suffix](file)), file.parent,
                                          sharded_weights_name(file.name), args.shards)
    except ValueError as error:
        print(f"error: {file}: {error}; ask for fewer shards", file=sys.stderr)
        return 1
    for shard in shards:
        print(f"{shard}: {shard.stat().st_size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
