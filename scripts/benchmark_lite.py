"""Speed of the lite backend on ONE CPU core (the real-time goal is 25 fps at 512x512), and how
small a face it still finds.

Usage: python scripts/benchmark_lite.py [--seconds 8] [--skip-sweep]
Prints: frames/s of `generate` per portrait size (with its prepare time and peak RSS growth);
prepare time (face search, mesh, rig) per photo size, faces pasted at a given share of the
height; the smallest face found in wide, tall and square photos.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

# one core: set before numpy / OpenCV load their thread pools
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import cv2
import numpy as np
import soundfile

from model.base import GenerationOptions, NoFaceError, Speech
from model.lite.backend import LiteBackend
from model.lite.landmarks import FaceLandmarker, FaceLandmarks

ROOT = Path(__file__).resolve().parent.parent

# photo sizes for prepare times, with the face's height as a share of the photo's height
PREPARE_CASES = (
    (512, 512, 0.2), (1280, 720, 0.1), (1920, 1080, 0.05), (4000, 3000, 0.04), (4000, 3000, 0.3),
    (8000, 6000, 0.04),
)
SWEEP_SIZES = ((1280, 720), (720, 1280), (1000, 1000))
SWEEP_SHARES = (0.05, 0.045, 0.04, 0.035, 0.03, 0.025, 0.02)
# a face counts as found when its mesh lies within this share of its height, on average
FOUND_ERROR = 0.05


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


def scenery(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A face-free textured background: smooth colour noise at a few scales."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for cells in (4, 16, 64):
        noise = rng.uniform(0, 255, (cells, max(1, cells * width // height), 3)).astype(np.float32)
        image += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) / 3
    return np.clip(image, 0, 255).astype(np.uint8)


def with_face(portrait: np.ndarray, reference: FaceLandmarks, width: int, height: int,
              share: float) -> tuple[np.ndarray, np.ndarray]:
    """The portrait scaled so its face is `share` of the height, left of centre in scenery;
    returns the photo and where the reference mesh lands in it."""
    image = scenery(width, height)
    scale = share * height / reference.size
    small = cv2.resize(portrait, None, fx=scale, fy=scale,
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    factors = np.array([small.shape[1] / portrait.shape[1], small.shape[0] / portrait.shape[0]])
    centre = reference.center * factors
    x, y = (np.array([0.4 * width, 0.55 * height]) - centre).round().astype(int)
    sx0, sy0, dx0, dy0 = max(0, -x), max(0, -y), max(0, x), max(0, y)
    w = min(small.shape[1] - sx0, width - dx0)
    h = min(small.shape[0] - sy0, height - dy0)
    image[dy0:dy0 + h, dx0:dx0 + w] = small[sy0:sy0 + h, sx0:sx0 + w]
    return image, reference.points * factors + [x, y]


def prepare_times(backend: LiteBackend, portrait: np.ndarray, reference: FaceLandmarks) -> None:
    print("prepare time by photo size (face search on the photo, mesh, rig at 832*480):")
    for width, height, share in PREPARE_CASES:
        image, _ = with_face(portrait, reference, width, height, share)
        backend.prepare_portrait(image, 832 * 480)  # warm the caches once
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            backend.prepare_portrait(image, 832 * 480)
            runs.append(time.perf_counter() - started)
        print(f"  {width}x{height}, face {share:.0%} of the height: {min(runs):.2f} s")
    empty = scenery(4000, 3000, seed=1)
    started = time.perf_counter()
    try:
        backend.prepare_portrait(empty, 832 * 480)
    except NoFaceError:
        pass
    print(f"  4000x3000 without a face (every pass runs): {time.perf_counter() - started:.2f} s")


def smallest_faces(landmarker: FaceLandmarker, portrait: np.ndarray, reference: FaceLandmarks) -> None:
    print(f"smallest face found (mesh within {FOUND_ERROR:.0%} of the face's height):")
    for width, height in SWEEP_SIZES:
        found = []
        for share in SWEEP_SHARES:
            image, expected = with_face(portrait, reference, width, height, share)
            face = landmarker.detect(image)
            error = np.inf if face is None else np.abs(face.points - expected).mean() / (share * height)
            found.append(error < FOUND_ERROR)
        smallest = min((s for s, ok in zip(SWEEP_SHARES, found, strict=True) if ok), default=None)
        if smallest is None:
            print(f"  {width}x{height}: no face found at any of the sizes tried")
            continue
        missed = [f"{s:.1%}" for s, ok in zip(SWEEP_SHARES, found, strict=True) if not ok]
        print(f"  {width}x{height}: down to {smallest:.1%} of the height"
              f" ({smallest * height:.0f} px); missed: {', '.join(missed) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="speech length per run")
    parser.add_argument("--skip-sweep", action="store_true", help="only frames/s and prepare times")
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

    landmarker = FaceLandmarker()
    reference = landmarker.detect(portrait)
    if reference is None:
        raise SystemExit("no face found in assets/portrait.jpg")
    prepare_times(backend, portrait, reference)
    if not args.skip_sweep:
        smallest_faces(landmarker, portrait, reference)


if __name__ == "__main__":
    main()
