"""The lite backend end to end: portrait in, frames out, measured where the face is."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from model.base import GenerationOptions, NoFaceError, Speech, fit_to_area, num_frames_for
from model.lite import mesh_indices as mesh
from model.lite.backend import LiteBackend
from model.lite.landmarks import FaceLandmarks
from model.lite.motion import blink_track, seeded_generators
from tests.conftest import ASSETS

RATE = 16_000


@pytest.fixture(scope="module")
def backend() -> LiteBackend:
    return LiteBackend()


@pytest.fixture(scope="module")
def portrait_image() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(ASSETS / "portrait.jpg")), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def prepared(backend, portrait_image):
    return backend.prepare_portrait(portrait_image, 832 * 480)


@pytest.fixture(scope="module")
def small_prepared(backend, portrait_image):
    """A quarter of the pixels, for the facts that do not depend on the size: a quarter of the CPU."""
    return backend.prepare_portrait(portrait_image, 256 * 256)


def voiced_bursts(seconds: float) -> np.ndarray:
    """Syllable-like bursts of a 140 Hz buzz: 160 ms on, 90 ms off."""
    t = np.arange(int(seconds * RATE)) / RATE
    buzz = sum(np.sin(2 * np.pi * 140.0 * k * t) / k for k in range(1, 13))
    on = (t % 0.25) < 0.16
    return (0.4 * buzz / np.abs(buzz).max() * on).astype(np.float32)


def silence_then_speech() -> Speech:
    return Speech(np.concatenate([np.zeros(int(1.6 * RATE), np.float32), voiced_bursts(2.0)]))


def render(backend, prepared, speech, seed=7, progress=None) -> np.ndarray:
    batches = list(backend.generate(
        prepared, speech, GenerationOptions(seed=seed), progress or (lambda *_: None)))
    for batch in batches:
        assert batch.dtype == np.uint8 and batch.shape[1:] == (prepared.height, prepared.width, 3)
        assert len(batch) <= 25
    return np.concatenate(batches)


def mouth_box(prepared, grown: bool = False) -> tuple[int, int, int, int]:
    """The closed lips' box; grown, it takes in the jaw's travel too."""
    x0, y0, x1, y1 = FaceLandmarks(prepared.features.points, 1.0).mouth_box()
    pad = (x1 - x0) // 4 if grown else 0
    return x0 - pad, y0 - pad, x1 + pad, y1 + 2 * pad


def luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_portrait_keeps_its_size_within_the_area(prepared):
    assert (prepared.width, prepared.height) == fit_to_area(512, 512, 832 * 480, 16) == (512, 512)


@pytest.mark.parametrize("image", [
    np.zeros((256, 320, 3), np.uint8),
    np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8),
])
def test_no_face_is_refused_with_advice(backend, image):
    with pytest.raises(NoFaceError, match="No face was found in the portrait; send a photo"):
        backend.prepare_portrait(image, 832 * 480)


@pytest.mark.parametrize("seconds", [0.02, 1.0, 1.37, 2.21])
def test_frame_count_matches_the_speech(backend, small_prepared, seconds):
    fractions = []
    frames = render(backend, small_prepared, Speech(voiced_bursts(seconds)),
                    progress=lambda fraction, stage: fractions.append((fraction, stage)))
    assert len(frames) == num_frames_for(seconds, backend.fps)
    total = len(frames)
    assert fractions[-1] == (1.0, f"frame {total}/{total}")
    assert all(a[0] < b[0] for a, b in itertools.pairwise(fractions))


def test_mouth_moves_with_speech_and_rests_in_silence(backend, prepared):
    frames = render(backend, prepared, silence_then_speech())
    x0, y0, x1, y1 = mouth_box(prepared, grown=True)
    mouth = luma(frames[:, y0:y1, x0:x1])
    silent, speaking = mouth[:38], mouth[42:]
    x0, y0, x1, y1 = mouth_box(prepared)
    lips = luma(frames[:, y0:y1, x0:x1]).mean(axis=(1, 2))

    # in silence only the slow head sway touches the mouth: tiny changes from frame to frame
    silent_steps = np.abs(np.diff(silent, axis=0)).mean(axis=(1, 2))
    speaking_steps = np.abs(np.diff(speaking, axis=0)).mean(axis=(1, 2))
    assert silent_steps.max() < 1.0
    assert speaking_steps.mean() > 4.0 * silent_steps.max()
    # the open mouth shows its dark inside
    assert lips[:38].mean() - lips[42:].min() > 12.0
    assert np.ptp(lips[:38]) < 2.0


def test_same_seed_same_video_other_seed_other_motion(backend, prepared):
    speech = Speech(voiced_bursts(2.0))  # the seeds' videos differ by 0.73 grey levels here, 0.70 over 3 s
    first = render(backend, prepared, speech, seed=123)
    again = render(backend, prepared, speech, seed=123)
    other = render(backend, prepared, speech, seed=124)
    assert np.array_equal(first, again)
    assert np.abs(first.astype(np.int16) - other).mean() > 0.5


def test_blinks_close_the_eyes(backend, small_prepared):
    # at 256 x 256 a blink changes the eyes by 35 grey levels and the sway 3 (41 and 5 at 512)
    prepared = small_prepared
    seconds, seed = 8.0, 5
    frames = render(backend, prepared, Speech(np.zeros(int(seconds * RATE), np.float32)), seed=seed)
    closure = blink_track(len(frames), backend.fps, seeded_generators(seed)[0])
    closed = np.flatnonzero(closure > 0.9)
    assert len(closed) >= 1, "an 8 s clip has at least one blink"
    points = prepared.features.points
    inside_eyes = np.zeros((prepared.height, prepared.width), np.uint8)
    for upper, lower in ((mesh.EYE_A_UPPER, mesh.EYE_A_LOWER), (mesh.EYE_B_UPPER, mesh.EYE_B_LOWER)):
        outline = np.concatenate([points[upper], points[lower][::-1]])
        cv2.fillPoly(inside_eyes, [np.round(outline).astype(np.int32)], 1)
    eyes = luma(frames)[:, inside_eyes == 1]
    for frame in closed:
        # just before and after the blink the eye is open and the head has hardly moved
        before, after = frame, frame
        while closure[before] > 0:
            before -= 1
        while closure[after] > 0:
            after += 1
        sway_change = np.abs(eyes[after] - eyes[before]).mean()
        blink_change = min(np.abs(eyes[frame] - eyes[before]).mean(),
                           np.abs(eyes[frame] - eyes[after]).mean())
        assert blink_change > 15.0 and blink_change > 3 * sway_change


def test_large_non_square_photo(backend, portrait_image):
    photo = cv2.resize(portrait_image, (4000, 4000), interpolation=cv2.INTER_LINEAR)[300:3300]
    prepared = backend.prepare_portrait(photo, 832 * 480)
    assert (prepared.width, prepared.height) == fit_to_area(4000, 3000, 832 * 480, 16)
    assert prepared.width % 16 == 0 and prepared.height % 16 == 0
    frames = render(backend, prepared, silence_then_speech())
    assert frames.shape == (90, prepared.height, prepared.width, 3)
    x0, y0, x1, y1 = mouth_box(prepared)
    lips = luma(frames[:, y0:y1, x0:x1]).mean(axis=(1, 2))
    assert lips[:38].mean() - lips[42:].min() > 12.0
