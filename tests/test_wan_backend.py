"""WanS2VBackend's translation between the worker and the pipeline: job options to sampling
settings, portrait sizes, and out-of-memory errors to the contract's OUT_OF_MEMORY sentence.
(Real generation through the worker is in test_wan_backend_job.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.base import BackendOutOfMemoryError, GenerationOptions, PreparedPortrait, Speech
from model.wan_s2v.backend import WanS2VBackend
from model.wan_s2v.config import NEGATIVE_PROMPT
from model.wan_s2v.memory import MemoryMode
from model.wan_s2v.pipeline import SamplingSettings
from model.wan_s2v.sizing import output_size


class RecordingPipeline:
    """Stands in for WanS2VPipeline to see what the backend asks of it."""

    def __init__(self, fail_after_first_clip: bool = False) -> None:
        self.fail_after_first_clip = fail_after_first_clip
        self.calls: list[tuple] = []

    def encode_portrait(self, image, height, width):
        self.calls.append(("encode_portrait", image.shape, height, width))
        return "latent"

    def generate(self, portrait, speech, seed, prompt, settings, on_progress):
        self.calls.append(("generate", portrait, seed, prompt, settings))
        yield np.zeros((2, 64, 64, 3), np.uint8)
        if self.fail_after_first_clip:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


SPEECH = Speech(np.zeros(16000, np.float32))
PORTRAIT = PreparedPortrait(width=64, height=64, features="latent")


def test_unset_options_are_the_official_defaults():
    pipeline = RecordingPipeline()
    backend = WanS2VBackend(pipeline, MemoryMode.FULL)
    list(backend.generate(PORTRAIT, SPEECH, GenerationOptions(seed=3, negative_prompt=""), lambda *_: None))
    assert pipeline.calls == [("generate", "latent", 3, "A person speaking", SamplingSettings())]
    assert SamplingSettings() == SamplingSettings(40, 4.5, 3.0, "unipc", NEGATIVE_PROMPT)


def test_job_options_override_every_default():
    pipeline = RecordingPipeline()
    backend = WanS2VBackend(pipeline, MemoryMode.FULL)
    options = GenerationOptions(seed=9, prompt="a man", negative_prompt="blur", num_inference_steps=12,
                                guidance_scale=0.0, sample_solver="dpm++", sample_shift=5.0)
    list(backend.generate(PORTRAIT, SPEECH, options, lambda *_: None))
    assert pipeline.calls[0][4] == SamplingSettings(12, 0.0, 5.0, "dpm++", "blur")


def test_the_portrait_is_encoded_at_the_reference_size():
    pipeline = RecordingPipeline()
    prepared = WanS2VBackend(pipeline, MemoryMode.FULL).prepare_portrait(np.zeros((1000, 800, 3), np.uint8), 832 * 480)
    height, width = output_size(1000, 800, 832 * 480)
    assert (prepared.height, prepared.width, prepared.features) == (height, width, "latent")
    assert pipeline.calls == [("encode_portrait", (1000, 800, 3), height, width)]
    assert height % 64 == 0 and width % 64 == 0 and height * width <= 832 * 480


def test_out_of_memory_fails_the_job_naming_the_mode_and_the_next_smaller_one():
    backend = WanS2VBackend(RecordingPipeline(fail_after_first_clip=True), MemoryMode.FP8)
    clips = backend.generate(PORTRAIT, SPEECH, GenerationOptions(seed=1), lambda *_: None)
    assert next(clips).shape == (2, 64, 64, 3)
    with pytest.raises(BackendOutOfMemoryError, match=r"memory mode 'fp8'; set WAN_MEMORY_MODE=offload"):
        next(clips)
