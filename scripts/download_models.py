"""Fetch the weights the worker reads into a models folder: every weight spec a backend declares
(model/declaration.py, WeightSpec), each into DIR/<its folder>, exactly as a worker with
MODEL_DIR=DIR downloads them at its first start. The backend is the one MODEL_BACKEND names, else
the registry's default (model/registry.py), unless --backend names others: each GPU backend's
weights are tens of GB, so none is fetched that the endpoint will not run.

    python scripts/download_models.py                                 # into /models, the image's folder
                                                                      # (the Dockerfile's `baked` stage)
    python scripts/download_models.py --model-dir /workspace/models   # fill a network volume, once, from
                                                                      # a pod (pods mount it at /workspace,
                                                                      # workers at /runpod-volume: they
                                                                      # read /runpod-volume/models)
    python scripts/download_models.py --backend NAME                  # that backend's weights (repeat
                                                                      # --backend for several)
    OMNIAVATAR_SIZE=1.3B python scripts/download_models.py --backend omniavatar
                                                                      # the weights a backend's settings
                                                                      # choose (here a model size)
    python scripts/download_models.py --required-only                 # without optional weights, such as
                                                                      # a fast mode's LoRA (also --no-lora)
    python scripts/download_models.py --only 'models_t5_*'            # only the files that match, folder
                                                                      # left unfinished (the image bakes
                                                                      # one component per layer this way)
    python scripts/download_models.py --check-only                    # fetch nothing: mark the folders
                                                                      # finished if they are complete,
                                                                      # else name what is missing (the
                                                                      # image's last weights step)

It fills DIR even when a copy is elsewhere (RunPod's model cache, an image's /models): filling a
volume or an image is what it is for. It takes the same lock as the workers, so it can run while
workers start on the same volume: whichever comes first downloads, the others wait and then use
the finished files. Each folder gets its finished-marker last. Set HF_TOKEN for authenticated
(faster, not rate-limited) downloads. Run it again after an interruption: files already fetched
are kept. With --only it fetches just the files of the chosen weights whose repository paths
match one of the patterns and marks nothing finished; a run without --only then keeps them,
fetches whatever is still missing and writes the markers.
Exit status: 0 done, 1 a download failed or --check-only found files missing (the message says
why and what to do), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from model.declaration import SettingValueError, WeightSpec
from model.registry import BACKENDS, DEFAULT_BACKEND
from model.weights import IMAGE_MODEL_DIR, download_into, download_subset, failure_reason, mark_if_complete


def default_backend(env: Mapping[str, str]) -> str:
    """The backend whose weights to fetch when --backend names none: MODEL_BACKEND's, else the
    registry's default. Raises SettingValueError for a MODEL_BACKEND the registry lacks."""
    name = env.get("MODEL_BACKEND", "").strip() or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise SettingValueError(f"MODEL_BACKEND={name!r} is unknown; set it to one of {', '.join(BACKENDS)}, "
                                "or name the weights' backend with --backend.")
    return name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model-dir", type=Path, default=IMAGE_MODEL_DIR,
        help=f"the worker's MODEL_DIR to fill (default {IMAGE_MODEL_DIR}, where the image's worker looks)",
    )
    parser.add_argument(
        "--backend", choices=list(BACKENDS), action="append",
        help="a backend whose weights to fetch; repeat for several (default: MODEL_BACKEND's, else "
             f"{DEFAULT_BACKEND})",
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
    parser.add_argument(
        "--check-only", action="store_true",
        help="download nothing: mark each folder finished if it is complete, else name what is missing",
    )
    args = parser.parse_args(argv)
    if args.check_only and args.only:
        parser.error("--check-only fetches nothing: leave out --only")
    return args


def chosen_specs(
    backends: list[str] | None, required_only: bool, env: Mapping[str, str] | None = None
) -> list[WeightSpec]:
    """The weight specs to fetch, each once, in the backends' order: those the backends' settings
    in `env` (default: this process's environment) need, such as one model size's."""
    env = os.environ if env is None else env
    specs = [
        spec for name in backends or [default_backend(env)]
        for spec in BACKENDS[name].weights_for(BACKENDS[name].read_settings(env))
    ]
    return list(dict.fromkeys(spec for spec in specs if not (required_only and spec.optional)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    for name in args.backend or ():
        if not BACKENDS[name].weights:
            print(f"{name} declares no weights: nothing to fetch for it")
    try:
        specs = chosen_specs(args.backend, args.required_only)
    except SettingValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    matched = False
    for spec in specs:
        if args.check_only:
            absent = mark_if_complete(spec, args.model_dir)
            if absent:
                print(f"error: {args.model_dir / spec.folder} lacks {', '.join(absent)} of {spec.repo_id} "
                      f"({spec.name}); fetch them first (--only PATTERN: in the image, a layer's step)",
                      file=sys.stderr)
                return 1
            print(f"{spec.repo_id} ({spec.name}): complete in {args.model_dir / spec.folder}")
            continue
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
