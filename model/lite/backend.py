"""The CPU backend: a single portrait animated by warping, driven by the speech's loudness and
spectrum, with seeded blinks and head sway. Real time on one core; no GPU, no downloads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from model.base import (
    GenerationOptions,
    NoFaceError,
    PreparedPortrait,
    ProgressCallback,
    Speech,
    TalkingHeadBackend,
    fit_to_area,
    num_frames_for,
)
from model.lite.declaration import DECLARATION, FPS, FRAMES_PER_BATCH
from model.lite.landmarks import FaceLandmarker, FaceLandmarks
from model.lite.live import LiteLiveGenerator
from model.lite.motion import blink_track, head_track, seeded_generators
from model.lite.renderer import FramePose, FrameRenderer, PortraitRig
from model.lite.speech_features import mouth_track

SIZE_MULTIPLE = 16
NO_FACE_MESSAGE = (
    "No face was found in the portrait; send a photo in which one face is clearly visible, "
    "not covered, turned no further than three-quarters and at least a twentieth of the "
    "picture's height."
)
# Below this face size (px, in the video) the mouth is a few pixels wide and cannot be animated.
MIN_FACE_PIXELS = 12.0
# From this face size (px, in the video) an open mouth is closed again on a new mesh of the
# closed photo (see `mouth_rig.close_mouth`); smaller faces are meshed too coarsely for that.
MIN_REFIT_FACE_PIXELS = 48.0


class LiteBackend(TalkingHeadBackend):
    declaration = DECLARATION
    name = "lite"
    # its one mode's rate, as declared (the handler reads `frame_rate(mode)`)
    fps = FPS

    def __init__(self) -> None:
        self._landmarker = FaceLandmarker()

    @classmethod
    def load(cls, model_dir: Path, settings: Mapping[str, Any]) -> LiteBackend:
        """Its face models ship inside a wheel: nothing to find, no GPU memory to plan."""
        return cls()

    def prepare_portrait(self, image: np.ndarray, max_area: int) -> PreparedPortrait:
        """The whole photo at the area budget, with the most prominent face rigged.

        Faces are found and meshed on the photo at its own resolution (a face a few percent of a
        wide shot is too small to find once the photo is reduced), then mapped into the video.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        faces = self._landmarker.find_faces(np.ascontiguousarray(image))
        if not faces:
            raise NoFaceError(NO_FACE_MESSAGE)
        out_w, out_h = fit_to_area(width, height, max_area, SIZE_MULTIPLE)
        scale_x, scale_y = out_w / width, out_h / height
        chosen, *others = (face.scaled(scale_x, scale_y) for face in faces)
        if chosen.size < MIN_FACE_PIXELS:
            raise NoFaceError(
                f"The face is only {chosen.size:.0f} pixels tall in a {out_w}x{out_h} video, too "
                "small to animate; send a photo in which the face is larger, or ask for a "
                "larger resolution."
            )
        resized = np.ascontiguousarray(image)
        if (out_w, out_h) != (width, height):
            shrinking = out_w * out_h < width * height
            resized = cv2.resize(
                image, (out_w, out_h),
                interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
            )
        refit = self._refit if chosen.size >= MIN_REFIT_FACE_PIXELS else None
        rig = PortraitRig.build(resized, chosen, others, refit=refit)
        return PreparedPortrait(width=out_w, height=out_h, features=rig)

    def _refit(self, image: np.ndarray, points: np.ndarray) -> np.ndarray | None:
        again = self._landmarker.refit(image, FaceLandmarks(points, 1.0))
        return None if again is None else again.points

    def open_live(self, portrait: PreparedPortrait, options: GenerationOptions) -> LiteLiveGenerator:
        """Frames one at a time from speech pushed as it is spoken (model/lite/live.py)."""
        rig = portrait.features
        if not isinstance(rig, PortraitRig):
            raise TypeError("this portrait was prepared by another backend")
        return LiteLiveGenerator(rig, self.fps, options.seed)

    def generate(
        self,
        portrait: PreparedPortrait,
        speech: Speech,
        options: GenerationOptions,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        rig = portrait.features
        if not isinstance(rig, PortraitRig):
            raise TypeError("this portrait was prepared by another backend")
        total = num_frames_for(speech.duration_seconds, self.fps)
        mouth = mouth_track(speech.samples, self.fps, total)
        blink_rng, head_rng = seeded_generators(options.seed)
        blinks = blink_track(total, self.fps, blink_rng)
        head = head_track(total, self.fps, head_rng, rig.head.face_height, mouth.opening)

        renderer = FrameRenderer(rig)
        for start in range(0, total, FRAMES_PER_BATCH):
            count = min(FRAMES_PER_BATCH, total - start)
            batch = np.empty((count, portrait.height, portrait.width, 3), dtype=np.uint8)
            for offset in range(count):
                i = start + offset
                pose = FramePose(
                    opening=float(mouth.opening[i]),
                    spread=float(mouth.spread[i]),
                    blink=float(blinks[i]),
                    shift_x=float(head.shift_x[i]),
                    shift_y=float(head.shift_y[i]),
                    roll=float(head.roll[i]),
                )
                renderer.render(pose, batch[offset])
            on_progress((start + count) / total, f"frame {start + count}/{total}")
            yield batch
