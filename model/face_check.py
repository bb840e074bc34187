"""Whether a portrait shows a face, for backends whose model would animate any picture it is given.

A diffusion model conditioned on a wall or a logo still makes a video, of nothing speaking, and
bills the GPU time for it; a job should fail NO_FACE instead, before the model runs. The check is
lite's own face search (model/lite/landmarks.py: the bundled BlazeFace detectors confirmed by the
face mesh), which every image of the worker has: it needs no GPU and no weights.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from model.base import NoFaceError

if TYPE_CHECKING:
    from model.lite.landmarks import FaceLandmarker

NO_FACE_MESSAGE = (
    "no face was found in the portrait; send a picture in which the speaker's face is clearly visible"
)


class FaceCheck:
    """Finds faces in portraits; its models are loaded on first use and kept."""

    def __init__(self) -> None:
        self._landmarker: FaceLandmarker | None = None
        self._lock = threading.Lock()

    def require_face(self, image: np.ndarray) -> None:
        """Raise NoFaceError when `image` (RGB uint8, H x W x 3) shows no face."""
        from model.lite.landmarks import FaceLandmarker

        with self._lock:  # the interpreters are not safe to share between threads
            if self._landmarker is None:
                self._landmarker = FaceLandmarker()
            found = self._landmarker.find_faces(np.ascontiguousarray(image))
        if not found:
            raise NoFaceError(NO_FACE_MESSAGE)
