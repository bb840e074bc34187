"""What a backend declares about itself, so that nothing outside its sub-package names it.

A backend's sub-package has a `declaration.py` holding `DECLARATION`, a BackendDeclaration; the
registry (model/registry.py) lists those modules. The worker's settings, the job schema, the
deploy tool, the downloader, the cost calculator, the image and the Hub listing's tests read the
declarations instead of branching on backend names.

This module and every `declaration.py` import only the standard library: the deploy tool reads
them with any Python, without torch or numpy.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.base import TalkingHeadBackend
    from model.options import BackendOptions

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
# The contract's default `resolution`, "832*480", as an area; a backend may declare its own per mode.
DEFAULT_MAX_AREA = 832 * 480


class SettingValueError(ValueError):
    """An environment variable's value cannot be used; the message is one sentence naming it and the fix."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """An environment variable the worker reads at start, validated there (handler/settings.py).

    `kind` is int, float, str or bool (true for any of TRUE_WORDS, in any case); `choices`
    restricts a str; `low`/`high` bound a number. An unset or empty variable takes `default`
    (None: the worker or the backend chooses at start). `description` is its line in the
    contract's environment table.
    """

    env: str
    kind: type
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    def read(self, env: Mapping[str, str]) -> Any:
        """This setting's value in `env`. Raises SettingValueError naming the variable and the fix.

        A float without bounds must be positive and finite (every such setting is a duration or
        a size); an int or float with bounds must lie within them.
        """
        raw = env.get(self.env, "").strip()
        if not raw:
            return self.default
        if self.kind is bool:
            return raw.lower() in TRUE_WORDS
        if self.kind is str:
            if self.choices and raw not in self.choices:
                raise SettingValueError(f"{self.env}={raw!r} is not one of {', '.join(self.choices)}.")
            return raw
        if self.kind is int:
            try:
                number: float = int(raw)
            except ValueError:
                raise SettingValueError(f"{self.env}={raw!r} is not a whole number.") from None
        else:
            try:
                number = float(raw)
            except ValueError:
                raise SettingValueError(f"{self.env}={raw!r} is not a number.") from None
            if self.low is None and self.high is None and not (number > 0 and math.isfinite(number)):
                raise SettingValueError(f"{self.env}={raw!r} must be a positive, finite number.")
        if not math.isfinite(number) or (self.low is not None and number < self.low) or (
            self.high is not None and number > self.high
        ):
            raise SettingValueError(f"{self.env}={raw!r} must be {self.bounds_text()}.")
        return number

    def bounds_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"between {self.low:g} and {self.high:g}"
        if self.low is not None:
            return f"at least {self.low:g}"
        return f"at most {self.high:g}" if self.high is not None else "a finite number"


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One set of files a backend loads, fetched once from a Hugging Face repository.

    `name` is what messages call them ("Wan2.2-S2V-14B weights", "Live Avatar LoRA"). A download
    lands in MODEL_DIR/`folder` (and the image bakes it into /models/`folder`); a folder counts as
    complete when every `required_files` entry is a file, every `required_folders` entry a folder
    holding something, every shard named by a `shard_indexes` file (safetensors' `weight_map`)
    is there and, for each group of `any_of`, at least one of its files is. `allow_patterns`
    (empty: the required files and folders) and `ignore_patterns` say what is downloaded, plus
    from each `any_of` group the file the folder already holds, else the first the repository
    has (the baked image holds the text encoder as shards). `revision` pins a commit, branch
    or tag (None: the default branch). `optional` weights serve only `modes`: without them the
    backend starts and jobs in those modes fail with MODEL_UNAVAILABLE. `when` (setting, value)
    says they are needed only while the backend's setting of that name has that value (a model
    size, say); None: always (BackendDeclaration.weights_for chooses).
    """

    name: str
    repo_id: str
    folder: str
    size_gb: float
    revision: str | None = None
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    required_files: tuple[str, ...] = ()
    required_folders: tuple[str, ...] = ()
    shard_indexes: tuple[str, ...] = ()
    any_of: tuple[tuple[str, ...], ...] = ()
    optional: bool = False
    modes: tuple[str, ...] = ()
    when: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class GpuNeed:
    """A GPU backend's compute: GPU memory (GB) per memory mode, the setting that picks the mode,
    and the least GPU memory a generation mode needs whatever the memory mode."""

    memory_gb: Mapping[str, int]
    default_memory_mode: str
    memory_mode_setting: str
    mode_min_memory_gb: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CpuNeed:
    """A CPU backend's compute: RunPod CPU flavours in priority order, and vCPUs per worker."""

    flavors: tuple[str, ...]
    vcpus: int


@dataclasses.dataclass(frozen=True)
class Speed:
    """A conservative device-seconds per second of video at `width`x`height`, for where nothing
    was measured (model/speed.py reads the measured figures in data/costs.toml first)."""

    seconds_per_video_second: float
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class DeployProfile:
    """What an endpoint for this backend needs (scripts/runpod_endpoint.py reads it).

    `speeds` holds, per mode, a conservative figure for devices nothing was measured on, and
    `job_overhead_seconds` the fixed time of a job (inputs, portrait, upload): with the measured
    figures they size the execution timeout and refuse jobs that could not finish in it.
    `init_timeout_seconds` is RUNPOD_INIT_TIMEOUT (None: RunPod's own default); the disk sizes
    are the container disk with and without a network volume holding the weights; `weights_hint`
    is what the deploy tool's help says about where the weights come from, `cold_start_hint` what
    it says after deploying an endpoint with neither a volume nor baked weights; `image_extras`
    are the pyproject extras the image needs for this backend; `bakes_into_image` says whether the
    Dockerfile has a `baked-<name>` target holding its weights (laid out file by file, a layer each).
    """

    compute: GpuNeed | CpuNeed
    idle_timeout_seconds: int
    speeds: Mapping[str, Speed]
    job_overhead_seconds: float
    disk_gb_with_volume: int
    disk_gb_without_volume: int
    init_timeout_seconds: int | None = None
    weights_hint: str = ""
    cold_start_hint: str = ""
    image_extras: tuple[str, ...] = ()
    bakes_into_image: bool = False


@dataclasses.dataclass(frozen=True)
class LiveSupport:
    """Whether a backend can render a live session (speech in as it is spoken), and how many a worker holds."""

    can_go_live: bool = False
    max_sessions: int = 0
    why_not: str = "this backend renders finished recordings only"


@dataclasses.dataclass(frozen=True)
class InputSupport:
    """Which inputs beyond one portrait and one speech a backend takes (docs/CONTRACT.md, "Job input").

    `video`: a video to dub (`video_file`/`video_url`) in place of the portrait; `speakers`: how
    many speeches one job may carry (2 takes `audio_file_2`/`audio_url_2` and `speaker_timing`).
    A job giving an input its backend does not take is refused naming the field.
    """

    video: bool = False
    speakers: int = 1


@dataclasses.dataclass(frozen=True)
class BackendDeclaration:
    """One backend, as the worker and the tooling see it before loading it.

    `backend_class` is "module:Class" (imported only when chosen); `modes` are the generation
    modes it offers, the first its default; `frame_batches` gives, per mode, the frames of
    `generate`'s first batch and of each later one (a stream cuts its segments there); `fps` is
    the video's frame rate: one for every mode, or one per mode (`frame_rate(mode)` reads it).
    """

    name: str
    backend_class: str
    modes: tuple[str, ...]
    frame_batches: Mapping[str, tuple[int, int]]
    fps: float | Mapping[str, float]
    deploy: DeployProfile
    settings: tuple[Setting, ...] = ()
    weights: tuple[WeightSpec, ...] = ()
    live: LiveSupport = LiveSupport()
    inputs: InputSupport = InputSupport()
    #: "module:Class" of the job fields it takes besides the shared ones (its backend's
    #: `options_class`), importable without the backend; empty: none
    options_class: str = ""
    #: the pixel-area budget of a job that gives no `resolution`, per mode (else DEFAULT_MAX_AREA)
    default_areas: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def default_max_area(self, mode: str) -> int:
        return self.default_areas.get(mode, DEFAULT_MAX_AREA)

    def frame_rate(self, mode: str) -> float:
        """Frames per second of the video `mode` makes (what its MP4, its segments and the result state)."""
        return float(self.fps[mode] if isinstance(self.fps, Mapping) else self.fps)

    def __post_init__(self) -> None:
        if set(self.frame_batches) != set(self.modes):
            raise ValueError(f"backend {self.name}: frame_batches must name each of its modes {self.modes}")
        if isinstance(self.fps, Mapping) and set(self.fps) != set(self.modes):
            raise ValueError(f"backend {self.name}: fps must be one rate or name each of its modes {self.modes}")
        rates = self.fps.values() if isinstance(self.fps, Mapping) else (self.fps,)
        if not all(isinstance(rate, (int, float)) and 0 < rate < math.inf for rate in rates):
            raise ValueError(f"backend {self.name}: every fps must be a positive, finite number")
        if set(self.deploy.speeds) != set(self.modes):
            raise ValueError(f"backend {self.name}: its deploy profile's speeds must name each of its modes")

    @property
    def needs_gpu(self) -> bool:
        return isinstance(self.deploy.compute, GpuNeed)

    def load_class(self) -> type[TalkingHeadBackend]:
        module, _, class_name = self.backend_class.partition(":")
        backend_class: type[TalkingHeadBackend] = getattr(importlib.import_module(module), class_name)
        return backend_class

    def load_options_class(self) -> type[BackendOptions]:
        """The backend's own job fields (model/options.py), without importing the backend."""
        from model.options import BackendOptions

        if not self.options_class:
            return BackendOptions
        module, _, class_name = self.options_class.partition(":")
        options_class: type[BackendOptions] = getattr(importlib.import_module(module), class_name)
        return options_class

    def read_settings(self, env: Mapping[str, str]) -> dict[str, Any]:
        """This backend's settings from `env`, by variable name. Raises SettingValueError."""
        return {setting.env: setting.read(env) for setting in self.settings}

    def weights_for(self, settings: Mapping[str, Any]) -> tuple[WeightSpec, ...]:
        """The weights it needs with these settings (`read_settings`' values): all but those whose
        `when` names another value of its setting."""
        return tuple(spec for spec in self.weights if spec.when is None or settings.get(spec.when[0]) == spec.when[1])
