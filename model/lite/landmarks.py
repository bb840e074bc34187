"""The 468-point face meshes of the faces in a photo, the most prominent first.

BlazeFace finds face candidates pass by pass (see `face_detection.search_levels`: whole image,
then tiles for small faces), on a reduced copy of the photo. Each candidate is confirmed by the
face-mesh model, run on a 192x192 crop rotated upright by the eyes, cut from the photo at the
resolution the mesh needs (the full photo for a small face), then again on the crop each answer
implies until the mesh settles. A candidate the mesh model does not recognise as a face, whose
mesh keeps wandering, or which disagrees with the detection, is dropped: that is what keeps a
busy background from producing faces. Meshes are in the photo's own pixels.
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
    detect_level,
    merge_detections,
    resized,
    search_copy_scale,
    search_levels,
)

MESH_MODEL_FILE = "face_landmark.tflite"
MESH_INPUT_SIZE = 192
NUM_MESH_POINTS = 468
# The mesh model wants the face box enlarged by half, as a square, around its centre.
CROP_SCALE = 1.5
# The mesh model's face-presence score, required of every pass. Measured: real faces (the
# astronaut at 18 to 500 px, turned, tilted 45 degrees, stylised as a painting) score above 0.999
# at every pass; a mission patch on her suit that BlazeFace took for a face scored 0.95, 0.98,
# then 0.77; skimage's cat at most 0.66.
MIN_FACE_PRESENCE = 0.9
# A real face's mesh barely moves when re-run on the crop it implies: at most 1.2 % of its size
# from the third pass on (measured on the astronaut darkened, blurred, noisy, JPEG at quality
# 10, in sunglasses, and on skimage's cameraman); a mesh fitted to a pattern keeps wandering
# (3-5 %). The presence score rejects most such patterns first; this is the second guard.
MAX_MESH_DRIFT = 0.025
# A mesh confirms a detection when its centre lies within the detection's box (grown by this
# share of its size) and its size is within this factor of the box's.
MESH_CENTRE_SLACK = 0.25
MESH_SIZE_FACTOR = 2.0
# Candidates confirmed per photo, largest first: a crowd costs a bounded time.
MAX_CANDIDATES = 8
# Mesh passes after the first, each on the crop the previous one implies, until the mesh moves
# less than `CONVERGED_DRIFT` of its size: a loose box from a coarse pass takes a few.
MAX_REFINE_PASSES = 5
CONVERGED_DRIFT = 0.008
# Two meshes whose centres are closer than this share of the smaller one's size are one face.
SAME_FACE_DISTANCE = 0.5
# The mesh runs on the reduced search copy when the face is at least this many model inputs wide
# there: enough detail, and no full-resolution resize of a face that fills a 12 MP photo.
MESH_SOURCE_DETAIL = 2.0
# Faces within this ratio of the largest face's size count as equally large; among them the one
# nearest the centre of the photo is animated.
SIZE_TIE_RATIO = 0.9


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

    @property
    def size(self) -> float:
        """The mesh's larger extent, measured upright (a tilt does not make a face larger)."""
        return upright_extent(self.points, self.roll_radians())[2]

    @property
    def center(self) -> np.ndarray:
        return upright_extent(self.points, self.roll_radians())[0]

    def scaled(self, scale_x: float, scale_y: float) -> FaceLandmarks:
        """The same mesh in an image resized by these factors."""
        return FaceLandmarks(
            (self.points * np.array([scale_x, scale_y])).astype(np.float32), self.presence
        )


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

    def bounds(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The image pixels (x0, y0, x1, y1) the rotated square can touch, clipped to the image."""
        reach = self.side * math.sqrt(0.5) + 2.0
        x0, y0 = np.floor(self.center - reach).astype(int)
        x1, y1 = np.ceil(self.center + reach).astype(int)
        return max(0, int(x0)), max(0, int(y0)), min(width, int(x1)), min(height, int(y1))


class FaceLandmarker:
    """Loads the bundled detection and mesh models once; runs them on one photo at a time."""

    def __init__(self, model_dir: Path | None = None) -> None:
        model_dir = model_dir or bundled_model_dir()
        self._detectors = {
            spec: BlazeFaceDetector(spec, model_dir) for spec in (SHORT_RANGE, FULL_RANGE)
        }
        self._mesh = Interpreter(model_path=str(model_dir / MESH_MODEL_FILE), num_threads=1)
        self._mesh.allocate_tensors()
        self._mesh_input = self._mesh.get_input_details()[0]["index"]
        outputs = sorted(self._mesh.get_output_details(), key=lambda o: o["shape"][-1])
        self._presence_output, self._points_output = outputs[0]["index"], outputs[1]["index"]

    def detect(self, rgb: np.ndarray) -> FaceLandmarks | None:
        """The mesh of the most prominent face in `rgb` (H, W, 3 uint8), or None without a face."""
        faces = self.find_faces(rgb)
        return faces[0] if faces else None

    def find_faces(self, rgb: np.ndarray) -> list[FaceLandmarks]:
        """Every confirmed face, the most prominent first (see `by_prominence`).

        Finer passes run only while they could still find a face that competes with the largest
        one confirmed so far: a face spanning a third of the photo's shorter side or more costs
        two whole-image detector runs, no tiles.
        """
        rgb = np.ascontiguousarray(rgb)
        height, width = rgb.shape[:2]
        scale = search_copy_scale(width, height)
        search_copy = resized(rgb, scale)
        photo = PhotoCopies(rgb, search_copy, scale)
        detections: list[FaceDetection] = []
        faces: list[MeshFit] = []
        for level in search_levels(width, height):
            largest = max((face.size for face in faces), default=0.0)
            if largest * SIZE_TIE_RATIO > level.largest_face(width, height):
                break
            found = detect_level(self._detectors[level.spec], level, search_copy, scale)
            if not found:
                continue
            detections += [face.scaled(1.0 / scale) for face in found]
            candidates = sorted(merge_detections(detections), key=lambda f: -f.size)
            confirmed = (self._confirm(photo, face) for face in candidates[:MAX_CANDIDATES])
            faces = by_prominence(distinct([f for f in confirmed if f is not None]), width, height)
        return [fit.landmarks for fit in faces]

    def _confirm(self, photo: PhotoCopies, detection: FaceDetection) -> MeshFit | None:
        """The mesh of a detected face, or None when the mesh model says it is not one."""
        landmarks = self._run_mesh(photo, crop_from_detection(detection))
        if not plausible(landmarks):
            return None
        drift = math.inf
        for _ in range(MAX_REFINE_PASSES):
            refined = self._run_mesh(photo, crop_from_landmarks(landmarks))
            if not plausible(refined):
                return None
            drift = float(np.abs(refined.points - landmarks.points).mean()) / landmarks.size
            landmarks = refined
            if drift < CONVERGED_DRIFT:
                break
        if drift > MAX_MESH_DRIFT or not agrees_with(landmarks, detection):
            return None
        return MeshFit(landmarks, drift)

    def refit(self, rgb: np.ndarray, landmarks: FaceLandmarks) -> FaceLandmarks | None:
        """The mesh again on `rgb` (the same face, changed a little), from where it was."""
        again = self._run_mesh(PhotoCopies(rgb), crop_from_landmarks(landmarks))
        return again if plausible(again) else None

    def _run_mesh(self, photo: PhotoCopies, image_crop: SquareCrop) -> FaceLandmarks:
        size = MESH_INPUT_SIZE
        rgb, scale = photo.source_for(MESH_SOURCE_DETAIL * size / image_crop.side)
        crop = SquareCrop(image_crop.center * scale, image_crop.side * scale, image_crop.angle)
        height, width = rgb.shape[:2]
        x0, y0, x1, y1 = crop.bounds(width, height)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return FaceLandmarks(np.zeros((NUM_MESH_POINTS, 2), np.float32), 0.0)
        # only the face's surroundings are cut out and, when much larger than the model's input,
        # shrunk first so that the warp does not alias
        shrink = min(1.0, 2.0 * size / crop.side)
        patch = resized(rgb[y0:y1, x0:x1], shrink)
        origin = np.array([x0, y0], dtype=np.float64)
        patch_crop = SquareCrop((crop.center - origin) * shrink, crop.side * shrink, crop.angle)
        to_patch = patch_crop.crop_to_image(size)
        warped = cv2.warpAffine(
            patch, to_patch, (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
        )
        # the mesh model expects pixels scaled to [0, 1]
        self._mesh.set_tensor(self._mesh_input, (warped.astype(np.float32) / 255.0)[None])
        self._mesh.invoke()
        raw = self._mesh.get_tensor(self._points_output).reshape(-1, 3)[:NUM_MESH_POINTS, :2]
        logit = float(self._mesh.get_tensor(self._presence_output).ravel()[0])
        presence = 1.0 / (1.0 + math.exp(-max(-80.0, min(80.0, logit))))
        points = ((raw @ to_patch[:, :2].T + to_patch[:, 2]) / shrink + origin) / scale
        return FaceLandmarks(points=points.astype(np.float32), presence=presence)


@dataclasses.dataclass(frozen=True)
class MeshFit:
    """A confirmed face, and how much its mesh still moved on the last pass (share of its size)."""

    landmarks: FaceLandmarks
    drift: float

    @property
    def size(self) -> float:
        return self.landmarks.size

    @property
    def center(self) -> np.ndarray:
        return self.landmarks.center


@dataclasses.dataclass(frozen=True)
class PhotoCopies:
    """A photo at full resolution and the reduced copy it is searched on (`scale` of it)."""

    full: np.ndarray
    copy: np.ndarray | None = None
    scale: float = 1.0

    def source_for(self, needed_scale: float) -> tuple[np.ndarray, float]:
        """The copy when it keeps at least `needed_scale` of the photo's detail, else the photo."""
        if self.copy is not None and self.scale >= needed_scale:
            return self.copy, self.scale
        return self.full, 1.0


def plausible(landmarks: FaceLandmarks) -> bool:
    """The mesh model recognises a face, and the mesh is not degenerate."""
    points = landmarks.points
    if landmarks.presence < MIN_FACE_PRESENCE or not np.isfinite(points).all():
        return False
    left, right = (points[i] for i in mesh_indices.EYE_OUTER_CORNERS)
    mouth_left, mouth_right = points[mesh_indices.LIPS_OUTER_UPPER[[0, -1]]]
    return bool(np.linalg.norm(right - left) > 1.0 and np.linalg.norm(mouth_right - mouth_left) > 1.0)


def distinct(fits: list[MeshFit]) -> list[MeshFit]:
    """One mesh per face: of candidates that landed on the same face, the best converged."""
    kept: list[MeshFit] = []
    for fit in sorted(fits, key=lambda f: f.drift):
        if all(np.linalg.norm(fit.center - other.center)
               >= SAME_FACE_DISTANCE * min(fit.size, other.size) for other in kept):
            kept.append(fit)
    return kept


def agrees_with(landmarks: FaceLandmarks, detection: FaceDetection) -> bool:
    """The mesh sits on the detected face: centred within its box, about as large."""
    slack = MESH_CENTRE_SLACK * detection.size
    x0, y0, x1, y1 = detection.box
    cx, cy = landmarks.center
    inside = x0 - slack <= cx <= x1 + slack and y0 - slack <= cy <= y1 + slack
    ratio = landmarks.size / max(detection.size, 1e-6)
    return bool(inside and 1.0 / MESH_SIZE_FACTOR <= ratio <= MESH_SIZE_FACTOR)


def by_prominence(faces: list[MeshFit], width: int, height: int) -> list[MeshFit]:
    """The largest face first; faces within `SIZE_TIE_RATIO` of it are ranked by distance to the
    photo's centre, then left to right, so the choice never depends on detection order."""
    if not faces:
        return []
    centre = np.array([width / 2, height / 2])
    largest = max(face.size for face in faces)

    def rank(face: MeshFit) -> tuple[int, float, float, float]:
        tied = face.size >= SIZE_TIE_RATIO * largest
        distance = float(np.linalg.norm(face.center - centre))
        return (0 if tied else 1, distance if tied else -face.size, float(face.center[0]), float(face.center[1]))

    return sorted(faces, key=rank)


def upright_extent(points: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre (image pixels), extent (along the face's right and down axes) and larger side of
    the points' box drawn upright in the face's own frame."""
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    upright = points @ rotation
    lo, hi = upright.min(axis=0), upright.max(axis=0)
    return rotation @ ((lo + hi) / 2), hi - lo, float((hi - lo).max())


def crop_from_detection(face: FaceDetection) -> SquareCrop:
    eye_a, eye_b = face.keypoints[0], face.keypoints[1]
    angle = math.atan2(eye_b[1] - eye_a[1], eye_b[0] - eye_a[0])
    return SquareCrop(center=face.center, side=face.size * CROP_SCALE, angle=angle)


def crop_from_landmarks(landmarks: FaceLandmarks) -> SquareCrop:
    """The crop MediaPipe tracks a face with: the mesh's extent, upright by the eye corners."""
    angle = landmarks.roll_radians()
    center, _, side = upright_extent(landmarks.points, angle)
    return SquareCrop(center=center, side=side * CROP_SCALE, angle=angle)
