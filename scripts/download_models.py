"""Fetch the weights the worker reads into a models folder: every weight spec the backends declare
(model/declaration.py, WeightSpec), each into DIR/<its folder>, exactly as a worker with
MODEL_DIR=DIR downloads them at its first start.

    python scripts/download_models.py                                 # into /models, the image's folder
                                                                      # (the Dockerfile's `baked` stage)
    python scripts/download_models.py --model-dir /workspace/models   # fill a network volume, once, from
                                                                      # a pod (pods mount it at /workspace,
                                                                      # workers at /runpod-volume: they
                                                                      # read /runpod-volume/models)
    python scripts/download_models.py --backend NAME                  # one backend's weights only
    python scripts/download_models.py --required-only                 # without optional weights, such as
                                                                      # a fast mode's LoRA (also --no-lora)
    python scripts/download_models.py --only 'models_t5_*'            # only the files that match, folder
                                                                      # left unfinished (the image bakes
                                                                      # one component per layer this way)

It fills DIR even when a copy is elsewhere (RunPod's model cache, an image's /models): filling a
volume or an image is what it is for. It takes the same lock as the workers, so it can run while
workers start on the same volume: whichever comes first downloads, the others wait and then use
the finished files. Each folder gets its finished-marker last. Set HF_TOKEN for authenticated
(faster, not rate-limited) downloads. Run it again after an interruption: files already fetched
are kept. With --only it fetches just the files of the chosen weights whose repository paths
match one of the patterns and marks nothing finished; a run without --only then keeps them,
fetches whatever is still missing and writes the markers.
Exit status: 0 done, 1 a download failed (the message says why and what to do), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model.declaration import WeightSpec
from model.registry import BACKENDS
from model.weights import IMAGE_MODEL_DIR, download_into, download_subset, failure_reason

WITH_WEIGHTS = [entry.name for entry in BACKENDS.values() if entry.weights]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model-dir", type=Path, default=IMAGE_MODEL_DIR,
        help=f"the worker's MODEL_DIR to fill (default {IMAGE_MODEL_DIR}, where the image's worker looks)",
    )
    parser.add_argument(
        "--backend", choices=list(BACKENDS), action="append",
        help="a backend whose weights to fetch; repeat for several (default: every backend that declares weights)",
    )
    parser.add_argument(
        "--required-only", "--no-lora", dest="required_only", action="store_true",
        help="skip optional weights (those only some modes need, such as a fast mode's LoRA)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="PATTERN",
        help="fetch only the files whose repository paths match one of these patterns (fnmatch: * also "
             "crosses /), without marking any folder finished",
    )
    return parser.parse_args(argv)


def chosen_specs(backends: list[str] | None, required_only: bool) -> list[WeightSpec]:
    """The weight specs to fetch, each once, in the backends' order."""
    specs = [spec for name in backends or WITH_WEIGHTS for spec in BACKENDS[name].weights]
    return list(dict.fromkeys(spec for spec in specs if not (required_only and spec.optional)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    for name in args.backend or ():
        if not BACKENDS[name].weights:
            print(f"{name} declares no weights: nothing to fetch for it")
    matched = False
    for spec in chosen_specs(args.backend, args.required_only):
        try:
            if args.only:
                names = download_subset(spec, args.model_dir, args.only)
            else:
                folder = download_into(spec, args.model_dir)
        except Exception as error:  # noqa: BLE001 - reported, with its type, instead of a traceback
            print(f"error: fetching {spec.repo_id} into {args.model_dir} failed: {failure_reason(error)}\n"
                  "Run the same command again to resume; check HF_TOKEN, the network and free disk space.",
                  file=sys.stderr)
            return 1
        if not args.only:
            print(f"{spec.repo_id} ({spec.name}): complete in {folder}")
        elif names:
            matched = True
            print(f"{spec.repo_id} ({spec.name}): {', '.join(names)} in {args.model_dir / spec.folder} "
                  "(not marked finished: run the script without --only to finish the folder)")
    if args.only and not matched:
        print(f"error: no file of the chosen weights matches {' '.join(args.only)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
