"""`MODEL_BACKEND=wan-s2v`: Wan2.2-S2V-14B behind the worker's TalkingHeadBackend interface.

Everything slow happens once in `load`: the weights are located (or downloaded), every model is
loaded and placed for the chosen memory mode, and the default prompts are encoded, so the first
job pays no loading cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from model.base import (
    BackendOutOfMemoryError,
    GenerationOptions,
    ModelUnavailableError,
    PreparedPortrait,
    ProgressCallback,
    Speech,
    TalkingHeadBackend,
)

from .config import FPS, GUIDANCE_SCALE, NEGATIVE_PROMPT, SAMPLE_SHIFT, SAMPLE_SOLVER, SAMPLE_STEPS
from .loader import load_components
from .memory import (
    MemoryMode,
    MemoryModeError,
    choose_memory_mode,
    free_gpu_bytes,
    out_of_memory_message,
    place_transformer,
    smaller_mode_advice,
    text_encoder_compute_device,
    text_encoder_home,
)
from .pipeline import SamplingSettings, WanS2VPipeline
from .sizing import video_size
from .weights import ensure_weights

log = logging.getLogger(__name__)

DEFAULT_PROMPT = GenerationOptions(seed=0).prompt


class WanS2VBackend(TalkingHeadBackend):
    name = "wan2.2-s2v-14b"
    fps = FPS

    def __init__(self, pipeline: WanS2VPipeline, memory_mode: MemoryMode) -> None:
        self.pipeline = pipeline
        self.memory_mode = memory_mode

    @classmethod
    def load(cls, model_dir: Path) -> "WanS2VBackend":
        """Find (or fetch) the weights and load every model once. Raises ModelUnavailableError."""
        started = time.monotonic()
        weights = ensure_weights(model_dir)
        device, dtype, mode = _execution_target()
        try:
            pipeline = _load_pipeline(weights, device, dtype, mode)
        except torch.cuda.OutOfMemoryError:
            raise ModelUnavailableError(
                f"the Wan2.2-S2V models do not fit in the GPU's memory in memory mode {mode.value!r}; "
                + smaller_mode_advice(mode)
            ) from None
        except (OSError, KeyError, ValueError, RuntimeError) as error:
            log.exception("loading Wan2.2-S2V from %s failed", weights)
            raise ModelUnavailableError(
                f"the Wan2.2-S2V weights in {weights} could not be loaded ({type(error).__name__}); "
                "the files may be incomplete or corrupt: delete them so the worker downloads them again."
            ) from error
        backend = cls(pipeline, mode)
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

    def prepare_portrait(self, image: np.ndarray, max_area: int) -> PreparedPortrait:
        height, width = video_size(image.shape[0], image.shape[1], max_area)
        started = time.monotonic()
        with _out_of_memory_as_job_error(self.memory_mode):
            latent = self.pipeline.encode_portrait(image, height, width)
        log.info("portrait encoded to its reference latent at %dx%d in %.2f s", width, height, time.monotonic() - started)
        return PreparedPortrait(width=width, height=height, features=latent)

    def generate(
        self,
        portrait: PreparedPortrait,
        speech: Speech,
        options: GenerationOptions,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        settings = SamplingSettings(
            num_steps=options.num_inference_steps or SAMPLE_STEPS,
            guidance_scale=GUIDANCE_SCALE if options.guidance_scale is None else options.guidance_scale,
            shift=SAMPLE_SHIFT if options.sample_shift is None else options.sample_shift,
            solver=options.sample_solver or SAMPLE_SOLVER,
            # the reference, too, takes an empty negative prompt to mean its default one
            negative_prompt=options.negative_prompt or NEGATIVE_PROMPT,
        )
        with _out_of_memory_as_job_error(self.memory_mode):
            yield from self.pipeline.generate(
                portrait.features, speech.samples, options.seed, options.prompt, settings, on_progress
            )


@contextlib.contextmanager
def _out_of_memory_as_job_error(mode: MemoryMode) -> Iterator[None]:
    """A CUDA out-of-memory error becomes BackendOutOfMemoryError naming the memory mode."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise BackendOutOfMemoryError(out_of_memory_message(mode)) from None


def _execution_target() -> tuple[torch.device, torch.dtype, MemoryMode]:
    if not torch.cuda.is_available():
        log.warning("no CUDA GPU: Wan2.2-S2V runs on the CPU in float32, which is only usable with tiny test checkpoints")
        return torch.device("cpu"), torch.float32, MemoryMode.FULL
    device = torch.device("cuda", torch.cuda.current_device())
    free = free_gpu_bytes(device)
    try:
        mode = choose_memory_mode(free, os.environ)
    except MemoryModeError as error:
        raise ModelUnavailableError(str(error)) from None
    log.info("%.1f GiB of GPU memory free: memory mode %s", free / 1024**3, mode.value)
    return device, torch.bfloat16, mode


def _load_pipeline(weights: Path, device: torch.device, dtype: torch.dtype, mode: MemoryMode) -> WanS2VPipeline:
    # Only the full mode reads the transformer straight onto the GPU; the others prepare it on
    # the CPU (cast to fp8, or pinned for streaming) so that its bf16 copy never sits on the GPU.
    load_device = device if mode is MemoryMode.FULL else torch.device("cpu")
    components = load_components(weights, load_device, dtype)
    place_transformer(components.transformer, mode, device)
    components.text_encoder.model.to(text_encoder_home(mode, device))
    components.vae.model.to(device)
    components.speech_encoder.model.to(device)
    return WanS2VPipeline(components, device, dtype, text_device=text_encoder_compute_device(mode, device))

