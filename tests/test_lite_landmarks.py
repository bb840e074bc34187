"""The bundled BlazeFace + face-mesh models, run through our own pre- and post-processing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model.lite import mesh_indices as mesh
from model.lite.face_detection import FULL_RANGE, SHORT_RANGE, ssd_anchor_centers
from model.lite.landmarks import FaceLandmarker
from tests.conftest import ASSETS


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    return FaceLandmarker()


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(ASSETS / "portrait.jpg")), cv2.COLOR_BGR2RGB)


def test_anchor_grids_match_the_model_outputs():
    short = ssd_anchor_centers(SHORT_RANGE)
    full = ssd_anchor_centers(FULL_RANGE)
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # first cell of the 16x16 map holds two anchors, the 8x8 map starts after 512
    np.testing.assert_allclose(short[:2], [[1 / 32, 1 / 32]] * 2)
    np.testing.assert_allclose(short[512], [1 / 16, 1 / 16])
    np.testing.assert_allclose(full[1], [3 / 96, 1 / 96])


def test_sample_portrait_mesh_lies_on_the_face(landmarker, portrait):
    face = landmarker.detect(portrait)
    assert face is not None and face.points.shape == (468, 2)
    fx0, fy0, fx1, fy1 = face.face_box()
    # the astronaut's face is in the upper middle of the photo, about 90 px wide
    assert 160 < fx0 < fx1 < 290 and 50 < fy0 < fy1 < 200
    assert 70 < fx1 - fx0 < 120

    mx0, my0, mx1, my1 = face.mouth_box()
    face_w, face_h = fx1 - fx0, fy1 - fy0
    assert abs((mx0 + mx1) / 2 - (fx0 + fx1) / 2) < 0.1 * face_w, "mouth not centred"
    assert fy0 + 0.6 * face_h < (my0 + my1) / 2 < fy0 + 0.9 * face_h, "mouth not in the lower face"
    assert 0.3 * face_w < mx1 - mx0 < 0.7 * face_w
    eyes_y = face.points[[mesh.EYE_A_UPPER[4], mesh.EYE_B_UPPER[4]], 1]
    assert (eyes_y < my0 - 0.2 * face_h).all()
    assert abs(face.roll_radians()) < 0.15


@pytest.mark.parametrize("image", [
    np.zeros((300, 400, 3), np.uint8),
    np.full((240, 240, 3), 200, np.uint8),
    np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8),
])
def test_no_face_in_blank_or_noise(landmarker, image):
    assert landmarker.detect(image) is None


def test_small_face_in_a_large_photo_is_found(landmarker, portrait):
    """The face is ~25 px wide once the photo is shrunk for detection: only the tiles see it."""
    expected = landmarker.detect(portrait)
    canvas = np.full((2400, 3200, 3), 215, np.uint8)
    canvas[1500:2012, 300:812] = portrait
    face = landmarker.detect(canvas)
    assert face is not None
    shift = np.array([300, 1500])
    error = np.abs(face.points - (expected.points + shift)).mean()
    assert error < 3.0, f"mesh off by {error:.1f} px on average"


def test_tilted_face_follows_the_tilt(landmarker, portrait):
    centre = (225.0, 125.0)
    turn = cv2.getRotationMatrix2D(centre, 25.0, 1.0)
    tilted = cv2.warpAffine(portrait, turn, (512, 512), borderMode=cv2.BORDER_REFLECT)
    face = landmarker.detect(tilted)
    assert face is not None
    # OpenCV's positive angle turns the picture counter-clockwise: the eye line tilts up
    assert face.roll_radians() == pytest.approx(np.deg2rad(-25.0), abs=0.08)
    expected = landmarker.detect(portrait).points @ turn[:, :2].T + turn[:, 2]
    assert np.abs(face.points - expected).mean() < 3.0
