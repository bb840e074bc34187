"""Frames per second of the lite backend on ONE CPU core (the real-time goal is 25 fps at 512x512).

Usage: python scripts/benchmark_lite.py [--seconds 8]
Prints one line per portrait size: prepare time, frames/s of `generate`, and peak RSS growth.
"""

from __future__ import annotations

import os

# one core: set before numpy / OpenCV load their thread pools
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import soundfile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.base import GenerationOptions, Speech  # noqa: E402
from model.lite.backend import LiteBackend  # noqa: E402


def looped_speech(seconds: float) -> Speech:
    samples, _ = soundfile.read(ROOT / "assets" / "speech.wav", dtype="float32")
    repeats = int(np.ceil(seconds * 16_000 / len(samples)))
    return Speech(np.tile(samples, repeats)[: int(seconds * 16_000)])


def measure(backend: LiteBackend, image: np.ndarray, max_area: int, speech: Speech) -> str:
    started = time.perf_counter()
    portrait = backend.prepare_portrait(image, max_area)
    prepared = time.perf_counter()
    frames = 0
    for batch in backend.generate(portrait, speech, GenerationOptions(seed=0), lambda *_: None):
        frames += len(batch)
    elapsed = time.perf_counter() - prepared
    return (
        f"{portrait.width}x{portrait.height}: prepare {prepared - started:.2f} s, "
        f"{frames} frames in {elapsed:.2f} s = {frames / elapsed:.1f} frames/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="speech length per run")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    backend = LiteBackend()
    portrait = cv2.cvtColor(cv2.imread(str(ROOT / "assets" / "portrait.jpg")), cv2.COLOR_BGR2RGB)
    speech = looped_speech(args.seconds)
    # a large non-square photo, fitted into the contract's default 832*480 pixel area
    large = cv2.resize(portrait, (1600, 1200), interpolation=cv2.INTER_CUBIC)[100:1100]

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("lite backend, 1 thread")
    print(" ", measure(backend, portrait, 512 * 512, speech))
    print(" ", measure(backend, large, 832 * 480, speech))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib
    print(f"  peak RSS growth {grown_kib / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
