"""The 468-point face mesh of the most prominent face in a portrait.

BlazeFace finds the face (short-range model first; the full-range model, then tiles of the image,
when the face is small in a large photo); the face-mesh model then runs on a 192x192 crop
rotated upright by the eyes, and runs a second time on the crop its own first answer implies,
which tightens the fit.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

from model.lite import mesh_indices
from model.lite.face_detection import (
    FULL_RANGE,
    SHORT_RANGE,
    BlazeFaceDetector,
    FaceDetection,
    bundled_model_dir,
)

MESH_MODEL_FILE = "face_landmark.tflite"
MESH_INPUT_SIZE = 192
NUM_MESH_POINTS = 468
# The mesh model wants the face box enlarged by half, as a square, around its centre.
CROP_SCALE = 1.5
MIN_FACE_PRESENCE = 0.5
# Detection runs on a copy no larger than this; tiles cover faces too small for a whole-image pass.
DETECTION_MAX_SIDE = 1024
TILE_FRACTIONS = (1.0, 0.5)


@dataclasses.dataclass(frozen=True)
class FaceLandmarks:
    """The face mesh in pixel coordinates of the image it was detected in."""

    points: np.ndarray  # (468, 2) float32, x then y
    presence: float

    def mouth_box(self) -> tuple[int, int, int, int]:
        """The lips' bounding box (x0, y0, x1, y1), outer lip contour, rounded outwards."""
        lips = self.points[mesh_indices.LIPS_OUTER]
        x0, y0 = np.floor(lips.min(axis=0)).astype(int)
        x1, y1 = np.ceil(lips.max(axis=0)).astype(int)
        return int(x0), int(y0), int(x1), int(y1)

    def face_box(self) -> tuple[int, int, int, int]:
        """The face outline's bounding box (x0, y0, x1, y1), rounded outwards."""
        oval = self.points[mesh_indices.FACE_OVAL]
        x0, y0 = np.floor(oval.min(axis=0)).astype(int)
        x1, y1 = np.ceil(oval.max(axis=0)).astype(int)
        return int(x0), int(y0), int(x1), int(y1)

    def roll_radians(self) -> float:
        """In-plane rotation of the face: 0 when the eyes are level."""
        left, right = (self.points[i] for i in mesh_indices.EYE_OUTER_CORNERS)
        return math.atan2(right[1] - left[1], right[0] - left[0])


@dataclasses.dataclass(frozen=True)
class SquareCrop:
    """A square region of an image, rotated by `angle` radians around its centre."""

    center: np.ndarray
    side: float
    angle: float

    def crop_to_image(self, crop_size: int) -> np.ndarray:
        """2x3 affine matrix taking crop pixel coordinates to image pixel coordinates."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        scale = self.side / crop_size
        rotation = np.array([[cos, -sin], [sin, cos]]) * scale
        offset = self.center - rotation @ np.array([crop_size / 2, crop_size / 2])
        return np.hstack([rotation, offset[:, None]]).astype(np.float64)


class FaceLandmarker:
    """Loads the bundled detection and mesh models once; `detect` runs them on one portrait."""

    def __init__(self, model_dir: Path | None = None) -> None:
        model_dir = model_dir or bundled_model_dir()
        self._short_range = BlazeFaceDetector(SHORT_RANGE, model_dir)
        self._full_range = BlazeFaceDetector(FULL_RANGE, model_dir)
        self._mesh = Interpreter(model_path=str(model_dir / MESH_MODEL_FILE), num_threads=1)
        self._mesh.allocate_tensors()
        self._mesh_input = self._mesh.get_input_details()[0]["index"]
        outputs = sorted(self._mesh.get_output_details(), key=lambda o: o["shape"][-1])
        self._presence_output, self._points_output = outputs[0]["index"], outputs[1]["index"]

    def detect(self, rgb: np.ndarray) -> FaceLandmarks | None:
        """The mesh of the largest face in `rgb` (H, W, 3 uint8), or None when there is no face."""
        face = self.find_face(rgb)
        if face is None:
            return None
        crop = crop_from_detection(face)
        landmarks = self._run_mesh(rgb, crop)
        if landmarks.presence < MIN_FACE_PRESENCE:
            return None
        refined = self._run_mesh(rgb, crop_from_landmarks(landmarks))
        return refined if refined.presence >= MIN_FACE_PRESENCE else landmarks

    def find_face(self, rgb: np.ndarray) -> FaceDetection | None:
        """The largest face BlazeFace finds, searching harder only when a quick look finds none."""
        height, width = rgb.shape[:2]
        scale = min(1.0, DETECTION_MAX_SIDE / max(width, height))
        small = rgb
        if scale < 1.0:
            small = cv2.resize(
                rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
            )
        faces = self._short_range.detect(small) or self._full_range.detect(small)
        if not faces:
            faces = self._search_tiles(small)
        if not faces:
            return None
        best = max(faces, key=lambda f: f.size * f.score)
        return FaceDetection(best.box / scale, best.keypoints / scale, best.score)

    def _search_tiles(self, rgb: np.ndarray) -> list[FaceDetection]:
        height, width = rgb.shape[:2]
        faces: list[FaceDetection] = []
        for fraction in TILE_FRACTIONS:
            side = max(32, int(min(width, height) * fraction))
            for y in tile_starts(height, side):
                for x in tile_starts(width, side):
                    tile = rgb[y : y + side, x : x + side]
                    faces += [f.translated(x, y) for f in self._full_range.detect(tile)]
            if faces:
                break
        return faces

    def _run_mesh(self, rgb: np.ndarray, crop: SquareCrop) -> FaceLandmarks:
        size = MESH_INPUT_SIZE
        source = rgb
        # shrink first when the crop is much larger than the input, so the warp does not alias
        shrink = min(1.0, 2.0 * size / crop.side)
        if shrink < 1.0:
            h, w = rgb.shape[:2]
            source = cv2.resize(
                rgb, (max(1, round(w * shrink)), max(1, round(h * shrink))),
                interpolation=cv2.INTER_AREA,
            )
        source_crop = SquareCrop(crop.center * shrink, crop.side * shrink, crop.angle)
        to_image = source_crop.crop_to_image(size)
        patch = cv2.warpAffine(
            source, to_image, (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
        )
        # the mesh model expects pixels scaled to [0, 1]
        self._mesh.set_tensor(self._mesh_input, (patch.astype(np.float32) / 255.0)[None])
        self._mesh.invoke()
        raw = self._mesh.get_tensor(self._points_output).reshape(-1, 3)[:NUM_MESH_POINTS, :2]
        logit = float(self._mesh.get_tensor(self._presence_output).ravel()[0])
        presence = 1.0 / (1.0 + math.exp(-max(-80.0, min(80.0, logit))))
        points = raw @ to_image[:, :2].T + to_image[:, 2]
        return FaceLandmarks(points=(points / shrink).astype(np.float32), presence=presence)


def tile_starts(length: int, side: int) -> list[int]:
    """Start offsets of tiles of `side` covering `length` with half-tile overlap."""
    if side >= length:
        return [0]
    starts = list(range(0, length - side, side // 2))
    return starts + [length - side]


def crop_from_detection(face: FaceDetection) -> SquareCrop:
    box = face.box
    center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    eye_a, eye_b = face.keypoints[0], face.keypoints[1]
    angle = math.atan2(eye_b[1] - eye_a[1], eye_b[0] - eye_a[0])
    return SquareCrop(center=center, side=face.size * CROP_SCALE, angle=angle)


def crop_from_landmarks(landmarks: FaceLandmarks) -> SquareCrop:
    """The crop MediaPipe tracks a face with: the mesh's extent, upright by the eye corners."""
    angle = landmarks.roll_radians()
    cos, sin = math.cos(angle), math.sin(angle)
    upright = landmarks.points @ np.array([[cos, -sin], [sin, cos]])
    lo, hi = upright.min(axis=0), upright.max(axis=0)
    center = np.array([[cos, -sin], [sin, cos]]) @ ((lo + hi) / 2)
    return SquareCrop(center=center, side=float((hi - lo).max()) * CROP_SCALE, angle=angle)
