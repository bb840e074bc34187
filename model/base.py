"""The interface between the worker and a talking-head model.

A backend is loaded once per worker. For every job the worker hands it a prepared portrait and the
speech, and the backend yields video frames in order, clip by clip, so that the MP4 writer can
encode while later frames are still being generated.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

SPEECH_SAMPLE_RATE = 16_000
# The contract's default `resolution`, "832*480", as an area; a backend may have its own per mode.
DEFAULT_MAX_AREA = 832 * 480

# fraction of the generation done (0..1), and a short human-readable stage
ProgressCallback = Callable[[float, str], None]


class NoFaceError(Exception):
    """The portrait has no face the backend can animate."""


class ModelUnavailableError(Exception):
    """The backend's weights or runtime could not be loaded; the message says where it looked."""


class HostUnfitError(ModelUnavailableError):
    """This machine cannot run the backend, though another may: no CUDA device where one is needed,
    too little GPU memory for every memory mode, weights on its disk that fail to load.

    The worker then leaves RunPod's pool (it fails its fitness check) instead of failing every
    job; a plain ModelUnavailableError is a setting wrong on every machine, which jobs report.
    """


class BackendOutOfMemoryError(Exception):
    """The accelerator ran out of memory; the message names the memory mode and the next smaller one."""


class InvalidOptionError(Exception):
    """A job field this backend (or the job's mode) cannot honour.

    `field` is the job field; the message is one sentence that names it and says the fix.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Speech:
    """The speech that drives the face: mono float32 samples in [-1, 1] at 16 kHz."""

    samples: np.ndarray

    @property
    def duration_seconds(self) -> float:
        return len(self.samples) / SPEECH_SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """Per-job knobs. `None` means: the backend's own default."""

    seed: int
    #: one of the backend's `modes`
    mode: str = "quality"
    prompt: str = "A person speaking"
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    # diffusion backends: the sampler ("unipc" or "dpm++") and its noise-schedule shift
    sample_solver: str | None = None
    sample_shift: float | None = None


@dataclasses.dataclass(frozen=True)
class PreparedPortrait:
    """A portrait after the backend's one-off work (face detection, reference latent, ...).

    `width`/`height` are the size of the video that will be produced; `features` is the
    backend's own data and is opaque to the worker.
    """

    width: int
    height: int
    features: Any


def fit_to_area(width: int, height: int, max_area: int, multiple: int) -> tuple[int, int]:
    """The largest size with the portrait's aspect ratio whose area fits `max_area`.

    Both sides are rounded down to `multiple`, and the portrait is never upscaled.
    """
    scale = min(1.0, math.sqrt(max_area / float(width * height)))
    out_w = max(multiple, int(width * scale) // multiple * multiple)
    out_h = max(multiple, int(height * scale) // multiple * multiple)
    return out_w, out_h


def num_frames_for(duration_seconds: float, fps: float) -> int:
    """Frames needed so that the video lasts as long as the speech, to within one frame."""
    return max(1, int(round(duration_seconds * fps)))


class TalkingHeadBackend(abc.ABC):
    """What the worker needs from a model."""

    #: reported to the user as `model`
    name: str
    #: frame rate of the produced video
    fps: float
    #: generation modes this backend offers (docs/CONTRACT.md, `mode`); the first is its default
    modes: tuple[str, ...] = ("quality",)

    def default_max_area(self, mode: str) -> int:
        """The pixel-area budget of a job that gives no `resolution` (the contract's 832*480)."""
        return DEFAULT_MAX_AREA

    def check_options(self, options: GenerationOptions) -> None:
        """Refuse, before any work, a job whose options this backend cannot honour.

        Raises InvalidOptionError naming the field. Backends with mode-specific fields extend this.
        """
        if options.mode not in self.modes:
            raise InvalidOptionError(
                "mode",
                f"mode must be one of {', '.join(self.modes)} on this endpoint ({self.name}), not {options.mode!r}.",
            )

    @abc.abstractmethod
    def prepare_portrait(self, image: np.ndarray, max_area: int) -> PreparedPortrait:
        """Do the per-portrait work once. `image` is RGB uint8 (H, W, 3).

        Raises NoFaceError when there is nothing to animate.
        """

    @abc.abstractmethod
    def generate(
        self,
        portrait: PreparedPortrait,
        speech: Speech,
        options: GenerationOptions,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        """Yield RGB uint8 frame batches shaped (n, height, width, 3), in order.

        Exactly `num_frames_for(speech.duration_seconds, self.fps)` frames in all.
        """
