"""The interface between the worker and a talking-head model.

A backend is loaded once per worker. For every job the worker hands it a prepared portrait and the
speech, and the backend yields video frames in order, clip by clip, so that the MP4 writer can
encode while later frames are still being generated.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

# part of the backend interface, so re-exported here
# The contract's default `resolution` as an area; a backend may declare its own per mode.
from model.declaration import DEFAULT_MAX_AREA as DEFAULT_MAX_AREA
from model.declaration import BackendDeclaration
from model.options import BackendOptions as BackendOptions
from model.options import InvalidOptionError as InvalidOptionError

if TYPE_CHECKING:
    from model.live import LiveGenerator

SPEECH_SAMPLE_RATE = 16_000
# The contract's default `prompt`.
DEFAULT_PROMPT = "A person speaking"

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


@dataclasses.dataclass(frozen=True)
class Speech:
    """The speech that drives the face: mono float32 samples in [-1, 1] at 16 kHz."""

    samples: np.ndarray

    @property
    def duration_seconds(self) -> float:
        return len(self.samples) / SPEECH_SAMPLE_RATE


class SourceVideo(abc.ABC):
    """A video to dub (a job's `video_file`/`video_url`), already probed and within the worker's limits.

    Its frames are decoded on demand, never held whole: `frames(fps)` streams them from the start,
    resampled in time to `fps` (a frame every 1/fps s, as ffmpeg's fps filter picks them), at the
    video's own size, RGB uint8 (height, width, 3), until the video ends. Its own audio is never used.
    """

    width: int
    height: int
    duration_seconds: float

    @abc.abstractmethod
    def first_frame(self) -> np.ndarray:
        """The video's first frame (what the portrait checks and the video size start from)."""

    @abc.abstractmethod
    def frames(self, fps: float) -> Iterator[np.ndarray]:
        """The video's frames at `fps`, from its start to its end, one at a time."""


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """Per-job knobs: the shared ones, and the backend's own (its `options_class`, parsed by
    `TalkingHeadBackend.parse_options`)."""

    seed: int
    #: one of the backend's `modes`
    mode: str = "quality"
    prompt: str = DEFAULT_PROMPT
    backend_options: BackendOptions = dataclasses.field(default_factory=BackendOptions)
    #: with two speakers (InputSupport.speakers): each speaker's own speech, placed in time as the
    #: job's `speaker_timing` says and padded with silence to the job's speech, which is their mix;
    #: empty for one speaker
    speakers: tuple[Speech, ...] = ()
    #: the video to dub, for a backend whose InputSupport takes one (the portrait is its first frame)
    source_video: SourceVideo | None = None


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

    #: what the worker and the tooling know before loading it (its sub-package's declaration.py)
    declaration: ClassVar[BackendDeclaration]
    #: reported to the user as `model`
    name: str

    @classmethod
    @abc.abstractmethod
    def load(cls, model_dir: Path, settings: Mapping[str, Any]) -> Self:
        """Load the model once, at worker start. `settings` are the values of the settings the
        declaration lists, by variable name, already validated. Raises ModelUnavailableError."""

    @property
    def modes(self) -> tuple[str, ...]:
        """The generation modes it offers (docs/CONTRACT.md, `mode`); the first is its default."""
        return self.declaration.modes

    def frame_batches(self, mode: str) -> tuple[int, int]:
        """How many frames `generate` yields in `mode`: its first batch, and each later one.

        A stream cuts its segments where batches end, so that a segment leaves as soon as the
        batch that completes it is made, not when the next one is.
        """
        return tuple(self.declaration.frame_batches[mode])  # type: ignore[return-value]

    def frame_rate(self, mode: str) -> float:
        """Frames per second of the video `mode` makes, as declared: the speech each frame carries,
        the MP4's and the segments' rate and the result's `fps`."""
        return self.declaration.frame_rate(mode)

    def default_max_area(self, mode: str) -> int:
        """The pixel-area budget of a job that gives no `resolution` (the contract's 832*480)."""
        return self.declaration.default_max_area(mode)

    @property
    def memory_mode_name(self) -> str | None:
        """The memory mode it runs in (data/costs.toml's `memory_mode`), for its speed; None: it has none."""
        return None

    @property
    def device_name(self) -> str:
        """What the result's `gpu` reports: the device the model runs on (`cpu` for a CPU backend)."""
        return "cpu"

    def translate_error(self, error: Exception) -> Exception:
        """The contract's view of an error a job raised outside the backend's own types, such as
        the accelerator running out of memory (BackendOutOfMemoryError); by default, unchanged."""
        return error

    def needs_fresh_worker(self, error: Exception) -> bool:
        """Whether `error` left the accelerator unusable, so RunPod should replace the worker."""
        return False

    def release_memory(self) -> None:
        """Give back accelerator memory a stopped job left unreachable; nothing on a CPU."""
        return None

    @property
    def options_class(self) -> type[BackendOptions]:
        """The job fields this backend takes besides the shared ones: its declaration's `options_class`."""
        return self.declaration.load_options_class()

    def parse_options(self, fields: Mapping[str, Any], mode: str) -> BackendOptions:
        """Validate, before any work, the job's mode and the fields the shared schema does not take.

        Raises InvalidOptionError naming the field: a mode this backend does not offer, a field
        it does not take, a value out of range or meaningless in that mode.
        """
        if mode not in self.modes:
            raise InvalidOptionError(
                "mode", f"mode must be one of {', '.join(self.modes)} on this endpoint ({self.name}), not {mode!r}."
            )
        return self.options_class.parse(fields, mode, self.name)

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

        Exactly `num_frames_for(speech.duration_seconds, self.frame_rate(options.mode))` frames in all.
        """

    def open_live(self, portrait: PreparedPortrait, options: GenerationOptions) -> LiveGenerator:
        """A live generator for `portrait` (model/live.py), for a backend whose declaration's `live`
        says it can go live. Raises LiveUnsupportedError otherwise, with the declaration's reason."""
        from model.live import LiveUnsupportedError

        raise LiveUnsupportedError(f"{self.name} cannot render live sessions: {self.declaration.live.why_not}.")
