"""`MODEL_BACKEND=wan-s2v`: Wan2.2-S2V-14B behind the worker's TalkingHeadBackend interface.

Everything slow happens once in `load`: the weights are located (or downloaded), every model is
loaded and placed for the chosen memory mode, and the default prompts are encoded, so the first
job pays no loading cost.

Two modes share those models: `quality` (the reference's 40 steps with guidance, pipeline.py) and
`fast` (Live Avatar's 4 distilled steps, fast_pipeline.py), whose LoRA is attached beside the
weights and active only while a fast job runs (model/wan_common/lora.py). Without the LoRA, fast jobs fail with
MODEL_UNAVAILABLE saying where it was looked for, and quality jobs go on; so they do with a LoRA file
that is not Live Avatar's (model/wan_s2v/lora.py checks it), naming what differs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from model.base import (
    DEFAULT_PROMPT,
    GenerationOptions,
    ModelUnavailableError,
    PreparedPortrait,
    ProgressCallback,
    Speech,
)
from model.torch_backend import load_failures_as_host_unfit
from model.wan_common.frames import fit_portrait
from model.wan_common.lora import LoraAdapter
from model.wan_common.memory import (
    MemoryMode,
    smaller_mode_advice,
)
from model.wan_common.placement import (
    MemoryModeBackend,
    execution_target,
    place_transformer,
    text_encoder_compute_device,
    text_encoder_home,
)
from model.weights import ensure

from .config import (
    FAST_SAMPLE_STEPS,
    FRAMES_PER_CLIP,
    GUIDANCE_SCALE,
    NEGATIVE_PROMPT,
    SAMPLE_SHIFT,
    SAMPLE_SOLVER,
    SAMPLE_STEPS,
)
from .declaration import (
    ATTENTION_BACKEND_SETTING,
    CHECKPOINT_WEIGHTS,
    COMPILE_SETTING,
    DECLARATION,
    LORA_FILE,
    LORA_WEIGHTS,
    MEMORY_MODE_SETTING,
)
from .fast_pipeline import FIRST_CLIP_DROPPED_FRAMES as FAST_DROPPED_FRAMES
from .fast_pipeline import FRAMES_PER_BLOCK, FastPortrait, FastSampler
from .loader import load_components
from .lora import attach_live_avatar_lora
from .memory import FP8_BLOCK_LAYERS, MIN_FREE_BYTES
from .options import FAST, QUALITY, WanS2VOptions
from .pipeline import FIRST_CLIP_DROPPED_FRAMES as QUALITY_DROPPED_FRAMES
from .pipeline import PortraitLatent, SamplingSettings, WanS2VPipeline
from .sizing import video_size

log = logging.getLogger(__name__)

# a portrait's encoding for one of the modes
_Encoding = TypeVar("_Encoding", PortraitLatent, FastPortrait)


@dataclasses.dataclass
class WanPortrait:
    """A portrait ready for either mode: each mode's encoding is made the first time it is used.

    `image` is the portrait already fitted to the video size (what both encodings start from), so
    a preset keeps a few MB, not the photo it came from.
    """

    image: np.ndarray
    height: int
    width: int
    quality: PortraitLatent | None = None
    fast: FastPortrait | None = None


class WanS2VBackend(MemoryModeBackend):
    declaration = DECLARATION
    name = "wan2.2-s2v-14b"

    def __init__(
        self, pipeline: WanS2VPipeline, memory_mode: MemoryMode, lora: LoraAdapter | ModelUnavailableError
    ) -> None:
        """`lora` is the fast mode's adapter, or why the fast mode is unavailable."""
        self.pipeline = pipeline
        self.memory_mode = memory_mode
        self.lora = lora
        self.fast_sampler = FastSampler(pipeline)

    @classmethod
    def load(cls, model_dir: Path, settings: Mapping[str, Any]) -> WanS2VBackend:
        """Find (or fetch) the weights and load every model once, in the memory mode WAN_MEMORY_MODE
        names (None: the largest that fits the GPU). Raises ModelUnavailableError."""
        memory_mode = settings.get(MEMORY_MODE_SETTING)
        started = time.monotonic()
        weights = ensure(CHECKPOINT_WEIGHTS, model_dir)
        lora_file = _find_lora(model_dir)
        device, dtype, mode = execution_target("Wan2.2-S2V-14B", weights, memory_mode, MIN_FREE_BYTES)
        too_big = (
            f"the Wan2.2-S2V models do not fit in this GPU's free memory in memory mode {mode.value!r}; "
            + smaller_mode_advice(mode)
        )
        with load_failures_as_host_unfit("Wan2.2-S2V", weights, too_big):
            pipeline, lora = _load_pipeline(weights, lora_file, device, dtype, mode)
        pipeline.transformer.configure_attention(
            settings.get(ATTENTION_BACKEND_SETTING) or "auto", bool(settings.get(COMPILE_SETTING))
        )
        backend = cls(pipeline, mode, lora)
        backend.warm_up()
        log.info(
            "Wan2.2-S2V ready on %s (%s, memory mode %s) in %.1f s",
            device, str(dtype).removeprefix("torch."), mode.value, time.monotonic() - started,
        )
        return backend

    def warm_up(self) -> None:
        """Encode the prompts most jobs use, so that their text encoding is already cached."""
        for prompt in (DEFAULT_PROMPT, NEGATIVE_PROMPT):
            self.pipeline.encode_prompt(prompt)

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    def parse_options(self, fields: Mapping[str, Any], mode: str) -> WanS2VOptions:
        options = super().parse_options(fields, mode)
        assert isinstance(options, WanS2VOptions)
        if mode == FAST and isinstance(self.lora, ModelUnavailableError):
            raise self.lora
        return options

    def prepare_portrait(self, image: np.ndarray, max_area: int) -> PreparedPortrait:
        height, width = video_size(image.shape[0], image.shape[1], max_area)
        portrait = WanPortrait(fit_portrait(image, height, width), height, width)
        self._quality_encoding(portrait)
        return PreparedPortrait(width=width, height=height, features=portrait)

    # Each mode's encoding of the portrait is made once and kept with it (presets too).
    def _quality_encoding(self, portrait: WanPortrait) -> PortraitLatent:
        if portrait.quality is None:
            portrait.quality = self._encode(portrait, QUALITY, self.pipeline.encode_portrait)
        return portrait.quality

    def _fast_encoding(self, portrait: WanPortrait) -> FastPortrait:
        if portrait.fast is None:
            portrait.fast = self._encode(portrait, FAST, self.fast_sampler.encode_portrait)
        return portrait.fast

    def _encode(
        self, portrait: WanPortrait, mode: str, encode: Callable[[np.ndarray, int, int], _Encoding]
    ) -> _Encoding:
        started = time.monotonic()
        with self.out_of_memory_as_job_error():
            encoded = encode(portrait.image, portrait.height, portrait.width)
        log.info(
            "portrait encoded for mode %s at %dx%d in %.2f s", mode, portrait.width, portrait.height,
            time.monotonic() - started,
        )
        return encoded

    def frame_batches(self, mode: str) -> tuple[int, int]:
        # quality: a clip at a time; fast: a block at a time; the first clip drops its first frames
        if mode == FAST:
            return (FRAMES_PER_BLOCK - FAST_DROPPED_FRAMES, FRAMES_PER_BLOCK)
        return (FRAMES_PER_CLIP - QUALITY_DROPPED_FRAMES, FRAMES_PER_CLIP)

    def generate(
        self,
        portrait: PreparedPortrait,
        speech: Speech,
        options: GenerationOptions,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        own = options.backend_options
        if not isinstance(own, WanS2VOptions):  # options not made by parse_options: all defaults
            own = WanS2VOptions()
        with self.out_of_memory_as_job_error():
            if options.mode == FAST:
                yield from self._generate_fast(portrait.features, speech, options, own, on_progress)
            else:
                yield from self._generate_quality(portrait.features, speech, options, own, on_progress)

    def _generate_quality(
        self, portrait: WanPortrait, speech: Speech, options: GenerationOptions, own: WanS2VOptions,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        settings = SamplingSettings(
            num_steps=own.num_inference_steps or SAMPLE_STEPS,
            guidance_scale=GUIDANCE_SCALE if own.guidance_scale is None else own.guidance_scale,
            shift=SAMPLE_SHIFT if own.sample_shift is None else own.sample_shift,
            solver=own.sample_solver or SAMPLE_SOLVER,
            # the reference, too, takes an empty negative prompt to mean its default one
            negative_prompt=own.negative_prompt or NEGATIVE_PROMPT,
        )
        latent = self._quality_encoding(portrait)
        yield from self.pipeline.generate(latent, speech.samples, options.seed, options.prompt, settings, on_progress)

    def _generate_fast(
        self, portrait: WanPortrait, speech: Speech, options: GenerationOptions, own: WanS2VOptions,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        if isinstance(self.lora, ModelUnavailableError):
            raise self.lora
        encoded = self._fast_encoding(portrait)
        steps = own.num_inference_steps or FAST_SAMPLE_STEPS
        with self.lora.active():
            yield from self.fast_sampler.generate(
                encoded, speech.samples, options.seed, options.prompt, steps, on_progress
            )




def _load_pipeline(
    weights: Path, lora_file: Path | ModelUnavailableError, device: torch.device, dtype: torch.dtype, mode: MemoryMode
) -> tuple[WanS2VPipeline, LoraAdapter | ModelUnavailableError]:
    """The placed models, and the fast mode's LoRA attached to the transformer (or why not)."""
    # Only the full mode reads the transformer straight onto the GPU; the others prepare it on
    # the CPU (cast to fp8, or pinned for streaming) so that its bf16 copy never sits on the GPU.
    load_device = device if mode is MemoryMode.FULL else torch.device("cpu")
    components = load_components(weights, load_device, dtype)
    # Attached before the memory mode places the transformer, so that its buffers go with it. A bad
    # file is the fast mode's fault alone: it comes back as the error fast jobs fail with.
    lora = lora_file if isinstance(lora_file, ModelUnavailableError) else attach_live_avatar_lora(
        components.transformer, lora_file
    )
    place_transformer(components.transformer, mode, device, FP8_BLOCK_LAYERS)
    components.text_encoder.model.to(text_encoder_home(mode, device))
    components.vae.model.to(device)
    components.speech_encoder.model.to(device)
    pipeline = WanS2VPipeline(components, device, dtype, text_device=text_encoder_compute_device(mode, device))
    return pipeline, lora


def _find_lora(model_dir: Path) -> Path | ModelUnavailableError:
    """The fast mode's LoRA file, or why there is none (the quality mode works without it)."""
    try:
        return ensure(LORA_WEIGHTS, model_dir) / LORA_FILE
    except ModelUnavailableError as error:
        log.warning("mode 'fast' is unavailable: %s", error)
        return error
