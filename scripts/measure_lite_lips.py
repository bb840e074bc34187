"""How far the CPU backend's mouth opens with the speech, per portrait, measured by dlib's 68-point
face model (independent of the mesh the backend animates with; see tests/lip_measure.py).

Usage: python scripts/measure_lite_lips.py [--area 147456] [--seconds 0] [--backend NAME] [PHOTO ...]
Default photos: the held-out faces in tests/data/faces/ and the frontal control assets/portrait.jpg.
Prints per portrait: the lip/loudness correlation over the frames, the mean lip opening (inner-lip
gap over nose length) in speech and in silence, and on how many frames dlib found the face.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.base import GenerationOptions, NoFaceError, Speech  # noqa: E402
from model.registry import load_backend  # noqa: E402
from tests.lip_measure import LipMeter, correlation, frame_loudness  # noqa: E402

DEFAULT_AREA = 384 * 384
# frames louder than this (dBFS) count as speech for the mean opening; below it, silence
SPEECH_DB = -40.0


def default_photos() -> list[Path]:
    return [*sorted((ROOT / "tests" / "data" / "faces").glob("*.jpg")), ROOT / "assets" / "portrait.jpg"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", type=Path)
    parser.add_argument("--area", type=int, default=DEFAULT_AREA, help="video area in pixels")
    parser.add_argument("--seconds", type=float, default=0.0, help="speech length (0: all of assets/speech.wav)")
    parser.add_argument("--backend", default=None, help="backend name (default: the CPU default)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    samples, rate = soundfile.read(ROOT / "assets" / "speech.wav", dtype="float32")
    if rate != 16_000 or samples.ndim != 1:
        raise SystemExit("assets/speech.wav must be 16 kHz mono")
    if args.seconds > 0:
        samples = samples[: int(args.seconds * rate)]
    backend = load_backend(args.backend, ROOT / "models", {})
    fps = backend.frame_rate(backend.modes[0])
    meter = LipMeter()
    print(f"{'portrait':<34} {'corr':>6} {'open(speech)':>12} {'open(silence)':>13} {'found':>9}")
    for photo in args.photos or default_photos():
        image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
        try:
            prepared = backend.prepare_portrait(image, args.area)
        except NoFaceError as error:
            print(f"{photo.name:<34} no face: {error}")
            continue
        options = GenerationOptions(seed=args.seed, mode=backend.modes[0])
        frames = np.concatenate(list(backend.generate(prepared, Speech(samples), options, lambda *_: None)))
        lips = meter.track(frames)
        loudness = frame_loudness(samples, fps, len(frames))
        speaking = loudness > SPEECH_DB
        opening = lips.opening
        print(f"{photo.name:<34} {correlation(opening, loudness):6.3f} "
              f"{np.nanmean(opening[speaking]):12.3f} {np.nanmean(opening[~speaking]):13.3f} "
              f"{lips.found:>4}/{len(frames):<4}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
