"""`MODEL_BACKEND=omniavatar`: OmniAvatar (Wan2.1-T2V with its audio LoRA) behind TalkingHeadBackend.

Everything slow happens once in `load`: the chosen size's weights are located (or downloaded),
the models are loaded, the LoRA merged, the memory mode applied and the default prompts encoded.
A job then encodes its portrait (once per portrait, presets at start) and runs the chunk loop
(pipeline.py), whose chunks leave one by one for the MP4 writer and the stream.

TeaCache (the reference's optional step skipping, off in its config) is not offered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.base import (
    DEFAULT_PROMPT,
    GenerationOptions,
    InvalidOptionError,
    PreparedPortrait,
    ProgressCallback,
    Speech,
)
from model.torch_backend import load_failures_as_host_unfit
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

from .config import GUIDANCE_SCALE, MAX_TOKENS, NEGATIVE_PROMPT, OVERLAP_FRAMES, SAMPLE_STEPS
from .declaration import (
    DECLARATION,
    MEMORY_MODE_SETTING,
    SIZE_14B,
    SIZE_SETTING,
    WAV2VEC_WEIGHTS,
    WEIGHTS_BY_SIZE,
)
from .loader import load_components
from .memory import FP8_BLOCK_LAYERS, MIN_FREE_BYTES
from .options import OmniAvatarOptions
from .pipeline import ChunkSettings, OmniAvatarPipeline, PortraitLatent, plan_video
from .portrait import fit_portrait, video_size

log = logging.getLogger(__name__)


class OmniAvatarBackend(MemoryModeBackend):
    declaration = DECLARATION

    def __init__(self, pipeline: OmniAvatarPipeline, memory_mode: MemoryMode, size: str) -> None:
        self.pipeline = pipeline
        self.memory_mode = memory_mode
        self.size = size
        self.name = f"omniavatar-{size.lower()}"

    @classmethod
    def load(cls, model_dir: Path, settings: Mapping[str, Any]) -> OmniAvatarBackend:
        """Find (or fetch) the weights of OMNIAVATAR_SIZE and load every model once, in the memory
        mode WAN_MEMORY_MODE names (None: the largest that fits). Raises ModelUnavailableError."""
        started = time.monotonic()
        size = settings.get(SIZE_SETTING) or SIZE_14B
        wan_spec, omniavatar_spec = WEIGHTS_BY_SIZE[size]
        wan_dir = ensure(wan_spec, model_dir)
        omniavatar_dir = ensure(omniavatar_spec, model_dir)
        wav2vec_dir = ensure(WAV2VEC_WEIGHTS, model_dir)
        device, dtype, mode = execution_target(
            f"OmniAvatar-{size}", wan_dir, settings.get(MEMORY_MODE_SETTING), MIN_FREE_BYTES[size])
        too_big = (
            f"OmniAvatar-{size} does not fit in this GPU's free memory in memory mode {mode.value!r}; "
            + smaller_mode_advice(mode)
        )
        with load_failures_as_host_unfit(f"OmniAvatar-{size}", omniavatar_dir, too_big):
            # only the full mode loads the transformer straight onto the GPU; the others prepare it
            # on the CPU (merged, then cast to fp8 or pinned), so its bf16 copy never sits on the GPU
            load_device = device if mode is MemoryMode.FULL else torch.device("cpu")
            components, merged = load_components(wan_dir, omniavatar_dir, wav2vec_dir, load_device, dtype)
            place_transformer(components.transformer, mode, device, FP8_BLOCK_LAYERS)
            components.text_encoder.model.to(text_encoder_home(mode, device))
            components.vae.model.to(device)
            components.speech_encoder.model.to(device)
        log.info(
            "OmniAvatar LoRA merged: %d layers at rank %s, %d tensors from %s",
            merged.merged_layers, merged.rank, merged.replaced_tensors, omniavatar_dir,
        )
        pipeline = OmniAvatarPipeline(components, device, dtype, text_device=text_encoder_compute_device(mode, device))
        backend = cls(pipeline, mode, size)
        for prompt in (DEFAULT_PROMPT, NEGATIVE_PROMPT):
            pipeline.encode_prompt(prompt)
        log.info(
            "OmniAvatar-%s ready on %s (%s, memory mode %s) in %.1f s",
            size, device, str(dtype).removeprefix("torch."), mode.value, time.monotonic() - started,
        )
        return backend

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    def prepare_portrait(self, image: np.ndarray, max_area: int) -> PreparedPortrait:
        height, width = video_size(image.shape[0], image.shape[1], max_area)
        started = time.monotonic()
        with self.out_of_memory_as_job_error():
            latent = self.pipeline.encode_portrait(fit_portrait(image, height, width))
        log.info("portrait encoded at %dx%d in %.2f s", width, height, time.monotonic() - started)
        return PreparedPortrait(width=width, height=height, features=latent)

    def generate(
        self, portrait: PreparedPortrait, speech: Speech, options: GenerationOptions, on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        own = options.backend_options
        if not isinstance(own, OmniAvatarOptions):  # options not made by parse_options: all defaults
            own = OmniAvatarOptions()
        settings = ChunkSettings(
            steps=own.num_inference_steps or SAMPLE_STEPS,
            guidance_scale=GUIDANCE_SCALE if own.guidance_scale is None else own.guidance_scale,
            audio_scale=own.audio_scale,
            overlap=OVERLAP_FRAMES if own.overlap_frames is None else own.overlap_frames,
            max_tokens=own.max_tokens or MAX_TOKENS,
            # the reference, too, takes an empty negative prompt to mean its default one
            negative_prompt=own.negative_prompt or NEGATIVE_PROMPT,
        )
        latent: PortraitLatent = portrait.features
        try:  # before any sampling: the chunk the size and budget give must leave room after the overlap
            plan_video(latent.height, latent.width, len(speech.samples), settings)
        except ValueError as error:
            field = "overlap_frames" if own.overlap_frames is not None else "max_tokens"
            raise InvalidOptionError(field, f"{error}.") from None
        with self.out_of_memory_as_job_error():
            yield from self.pipeline.generate(
                latent, speech.samples, options.seed, options.prompt, settings, on_progress
            )
