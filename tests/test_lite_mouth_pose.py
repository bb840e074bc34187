"""The lite mouth opens and closes with the speech on smiling faces, turned three-quarters or not,
as read by dlib's 68-point face model (tests/lip_measure.py), not by the mesh that lite animates.

Held-out photos (tests/data/faces/, sources in assets/LICENSES.md): a smile turned three-quarters
to each side (one photo and its mirror image), and a smile showing its teeth, head on. The control
is the frontal close-up the other lite tests use (assets/portrait.jpg).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile

from model.base import GenerationOptions, Speech
from model.lite import mesh_indices as mesh
from model.lite.backend import LiteBackend
from model.lite.landmarks import FaceLandmarker
from model.lite.mouth_rig import resting_smile
from tests.lip_measure import LipMeter, correlation, frame_loudness

ROOT = Path(__file__).resolve().parent.parent
FACES = ROOT / "tests" / "data" / "faces"
FPS = 25
AREA = 320 * 320
# 4 s of the sample speech: a phrase, its 1.2 s pause, the next phrase
SPEECH_SPAN_SECONDS = (2.4, 6.4)

# Measured at this area and span (scripts/measure_lite_lips.py prints the same on the whole
# speech): before the fix the head-on smile scored 0.03 (its smile closed pass after pass until the
# lower lip was gone, and dlib read the smear as open in silence); after it, 0.90, and the turned
# smiles 0.91 and 0.89 (as before). 0.5 is the aim for a mouth that moves with the speech,
# with room for dlib's frame-to-frame jitter.
HELD_OUT_MIN_CORRELATION = 0.5
# the control measured 0.85 before and after; close-ups reach 0.7-0.8 on the whole speech
CONTROL_MIN_CORRELATION = 0.75

HELD_OUT = ("three_quarter_smile.jpg", "three_quarter_smile_mirrored.jpg", "frontal_teeth_smile.jpg")


@pytest.fixture(scope="module")
def backend() -> LiteBackend:
    return LiteBackend()


@pytest.fixture(scope="module")
def meter() -> LipMeter:
    return LipMeter()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    samples, rate = soundfile.read(ROOT / "assets" / "speech.wav", dtype="float32")
    start, stop = (int(t * rate) for t in SPEECH_SPAN_SECONDS)
    return samples[start:stop]


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def lip_loudness_correlation(backend: LiteBackend, meter: LipMeter, image: np.ndarray, speech: np.ndarray) -> float:
    prepared = backend.prepare_portrait(image, AREA)
    frames = np.concatenate(list(backend.generate(prepared, Speech(speech), GenerationOptions(seed=7),
                                                  lambda *_: None)))
    lips = meter.track(frames)
    assert lips.found >= 0.9 * len(frames), f"dlib found the face on {lips.found}/{len(frames)} frames"
    return correlation(lips.opening, frame_loudness(speech, FPS, len(frames)))


@pytest.mark.parametrize("name", HELD_OUT)
def test_smiling_face_opens_and_closes_with_the_speech(backend, meter, speech, name):
    score = lip_loudness_correlation(backend, meter, read_rgb(FACES / name), speech)
    assert score >= HELD_OUT_MIN_CORRELATION, f"{name}: lip/loudness correlation {score:.3f}"


def test_frontal_close_up_keeps_its_level(backend, meter, speech):
    score = lip_loudness_correlation(backend, meter, read_rgb(ROOT / "assets" / "portrait.jpg"), speech)
    assert score >= CONTROL_MIN_CORRELATION, f"control: lip/loudness correlation {score:.3f}"


def test_a_teeth_smile_rests_as_it_is_and_a_shout_does_not():
    """The smile is told from an open mouth by what fills the gap between the lips: teeth, or the
    dark of the mouth's inside."""
    smile = read_rgb(FACES / "frontal_teeth_smile.jpg")
    points = FaceLandmarker().find_faces(smile)[0].points
    assert resting_smile(smile, points) is not None
    shout = smile.copy()
    inner = np.concatenate([points[mesh.LIPS_INNER_UPPER], points[mesh.LIPS_INNER_LOWER][::-1]])
    cv2.fillPoly(shout, [np.round(inner).astype(np.int32)], (40, 12, 14))
    assert resting_smile(shout, points) is None
