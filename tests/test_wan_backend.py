"""WanS2VBackend's translation between the worker and the pipeline: job options to sampling
settings, portrait sizes, and out-of-memory errors to the contract's OUT_OF_MEMORY sentence.
(Real generation through the worker is in test_wan_backend_job.py.)"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from model.base import (
    BackendOutOfMemoryError,
    GenerationOptions,
    InvalidOptionError,
    ModelUnavailableError,
    PreparedPortrait,
    Speech,
)
from model.wan_common.memory import MemoryMode
from model.wan_s2v.backend import WanPortrait, WanS2VBackend
from model.wan_s2v.config import FAST_MAX_AREA, NEGATIVE_PROMPT
from model.wan_s2v.options import WanS2VOptions
from model.wan_s2v.pipeline import SamplingSettings
from model.wan_s2v.sizing import output_size


class RecordingPipeline:
    """Stands in for WanS2VPipeline to see what the backend asks of it."""

    dtype = torch.float32
    device = torch.device("cpu")
    vae = types.SimpleNamespace(dtype=torch.float32)

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
PORTRAIT = PreparedPortrait(
    width=64, height=64, features=WanPortrait(np.zeros((64, 64, 3), np.uint8), 64, 64, "latent")
)
NO_LORA = ModelUnavailableError("the Live Avatar LoRA of the fast mode was not found (looked at /models/Live-Avatar)")


def backend_for(pipeline, memory_mode=MemoryMode.FULL, lora=NO_LORA) -> WanS2VBackend:
    return WanS2VBackend(pipeline, memory_mode, lora)


def test_unset_options_are_the_official_defaults():
    pipeline = RecordingPipeline()
    backend = backend_for(pipeline)
    options = GenerationOptions(seed=3, backend_options=backend.parse_options({"negative_prompt": ""}, "quality"))
    list(backend.generate(PORTRAIT, SPEECH, options, lambda *_: None))
    assert pipeline.calls == [("generate", "latent", 3, "A person speaking", SamplingSettings())]
    assert SamplingSettings() == SamplingSettings(40, 4.5, 3.0, "unipc", NEGATIVE_PROMPT)


def test_job_options_override_every_default():
    pipeline = RecordingPipeline()
    backend = backend_for(pipeline)
    fields = {"negative_prompt": "blur", "num_inference_steps": 12, "guidance_scale": 0.0, "sample_solver": "dpm++",
              "sample_shift": 5.0}
    options = GenerationOptions(seed=9, prompt="a man", backend_options=backend.parse_options(fields, "quality"))
    list(backend.generate(PORTRAIT, SPEECH, options, lambda *_: None))
    assert pipeline.calls[0][4] == SamplingSettings(12, 0.0, 5.0, "dpm++", "blur")


def test_the_portrait_is_encoded_at_the_reference_size():
    pipeline = RecordingPipeline()
    prepared = backend_for(pipeline).prepare_portrait(np.zeros((1000, 800, 3), np.uint8), 832 * 480)
    height, width = output_size(1000, 800, 832 * 480)
    assert (prepared.height, prepared.width, prepared.features.quality) == (height, width, "latent")
    assert pipeline.calls == [("encode_portrait", (height, width, 3), height, width)]  # fitted once, kept small
    assert height % 64 == 0 and width % 64 == 0 and height * width <= 832 * 480


def test_out_of_memory_fails_the_job_naming_the_mode_and_the_next_smaller_one():
    backend = backend_for(RecordingPipeline(fail_after_first_clip=True), MemoryMode.FP8)
    clips = backend.generate(PORTRAIT, SPEECH, GenerationOptions(seed=1), lambda *_: None)
    assert next(clips).shape == (2, 64, 64, 3)
    with pytest.raises(BackendOutOfMemoryError, match=r"memory mode 'fp8'; set WAN_MEMORY_MODE=offload"):
        next(clips)


@pytest.mark.parametrize("field, value", [
    ("guidance_scale", 4.5), ("negative_prompt", "blur"), ("sample_solver", "unipc"), ("sample_shift", 3.0),
])
def test_fast_mode_refuses_the_fields_of_guidance_and_the_quality_sampler(field, value):
    backend = backend_for(RecordingPipeline(), lora=object())
    with pytest.raises(InvalidOptionError, match=f"{field} has no meaning in mode 'fast'") as refused:
        backend.parse_options({field: value}, "fast")
    assert refused.value.field == field
    assert getattr(backend.parse_options({field: value}, "quality"), field) == value


def test_fast_mode_takes_up_to_its_distilled_steps():
    backend = backend_for(RecordingPipeline(), lora=object())
    assert backend.parse_options({"num_inference_steps": 4}, "fast") == WanS2VOptions(num_inference_steps=4)
    with pytest.raises(InvalidOptionError, match="num_inference_steps is at most 4 in mode 'fast'"):
        backend.parse_options({"num_inference_steps": 5}, "fast")


def test_fast_mode_without_its_lora_fails_before_any_work_and_quality_goes_on():
    pipeline = RecordingPipeline()
    backend = backend_for(pipeline)
    with pytest.raises(ModelUnavailableError, match="looked at /models/Live-Avatar"):
        backend.parse_options({}, "fast")
    backend.parse_options({}, "quality")
    assert next(iter(backend.generate(PORTRAIT, SPEECH, GenerationOptions(seed=1), lambda *_: None))).shape[0] == 2


def test_fast_mode_sizes_a_job_without_resolution_like_the_reference():
    backend = backend_for(RecordingPipeline())
    assert backend.default_max_area("fast") == FAST_MAX_AREA == 704 * 384
    assert backend.default_max_area("quality") == 832 * 480


def test_the_real_model_on_a_machine_without_cuda_makes_the_worker_leave_the_pool(tmp_path, monkeypatch):
    from model.base import HostUnfitError
    from model.wan_common.placement import execution_target
    from model.wan_s2v.memory import MIN_FREE_BYTES

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "config.json").write_text('{"dim": 5120, "num_layers": 40}')
    with pytest.raises(HostUnfitError, match="no usable CUDA GPU, and Wan2.2-S2V-14B needs one"):
        execution_target("Wan2.2-S2V-14B", tmp_path, None, MIN_FREE_BYTES)
    (tmp_path / "config.json").write_text('{"dim": 24, "num_layers": 2}')  # the tests' tiny checkpoints run
    assert execution_target("Wan2.2-S2V-14B", tmp_path, None, MIN_FREE_BYTES)[0] == torch.device("cpu")


@pytest.mark.parametrize("fields, field", [
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"guidance_scale": [1]}, "guidance_scale"),
    ({"sample_solver": "euler"}, "sample_solver"),
    ({"sample_shift": -1}, "sample_shift"),
    ({"negative_prompt": 3}, "negative_prompt"),
    ({"num_inference_step": 4}, "num_inference_step"),  # a typo is refused, not ignored
])
def test_fields_out_of_range_or_unknown_are_refused_by_name(fields, field):
    with pytest.raises(InvalidOptionError) as refused:
        backend_for(RecordingPipeline()).parse_options(fields, "quality")
    assert refused.value.field == field and field in str(refused.value)


def test_the_result_names_the_gpu_the_model_runs_on(monkeypatch):
    pipeline = RecordingPipeline()
    assert backend_for(pipeline).device_name == "cpu"
    pipeline.device = torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"NVIDIA H100 80GB HBM3 #{device.index}")
    assert backend_for(pipeline).device_name == "NVIDIA H100 80GB HBM3 #1"


def test_gpu_failures_become_the_contracts_errors():
    backend = backend_for(RecordingPipeline(), MemoryMode.FP8)
    translated = backend.translate_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert isinstance(translated, BackendOutOfMemoryError) and "memory mode 'fp8'" in str(translated)
    other = ValueError("not a GPU problem")
    assert backend.translate_error(other) is other
    assert backend.needs_fresh_worker(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert backend.needs_fresh_worker(RuntimeError("device-side assert triggered"))
    assert not backend.needs_fresh_worker(RuntimeError("shape mismatch"))


class FaultingPipeline(RecordingPipeline):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def generate(self, portrait, speech, seed, prompt, settings, on_progress):
        raise self.error
        yield  # a generator, like the real one


@pytest.mark.parametrize("error, code", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "OUT_OF_MEMORY"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "INTERNAL"),
])
def test_a_job_whose_gpu_fails_asks_runpod_for_a_fresh_worker(error, code):
    from handler.job import Worker
    from handler.sample import sample_job_input
    from handler.settings import WorkerSettings

    worker = Worker(settings=WorkerSettings.from_env({}), backend=backend_for(FaultingPipeline(error)), presets=None)
    result = worker.handle({"id": "gpu-fault", "input": sample_job_input(resolution="64*64")})
    assert result["error"].startswith(f"{code}: ") and result["refresh_worker"] is True, result
