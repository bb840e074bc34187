"""Wan2.2-S2V as a diffusers pipeline, on tiny random-weight models: saved in diffusers' layout,
loaded back with `DiffusionPipeline.from_pretrained`, called like any diffusers pipeline, and
giving exactly the worker's frames."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.utils import dynamic_modules_utils
from PIL import Image

from model.base import GenerationOptions, Speech
from model.wan_common.frames import to_uint8_frames
from model.wan_common.memory import MemoryMode
from model.wan_common.text import TextEncoder
from model.wan_s2v.backend import WanS2VBackend
from model.wan_s2v.options import QUALITY
from model.wan_s2v.pipeline import LOADER_MODULE, WanS2VPipeline
from model.wan_s2v.transformer import WanS2VTransformer3DModel
from tests.test_wan_pipeline import FAST as SETTINGS
from tests.test_wan_pipeline import tiny_pipeline, tiny_transformer
from tests.wan_tiny_models import speech_samples

SIZE = 64
SEED = 7
PROMPT = "a person speaking"
CALL = dict(prompt=PROMPT, negative_prompt=SETTINGS.negative_prompt, height=SIZE, width=SIZE,
            num_inference_steps=SETTINGS.num_steps, guidance_scale=SETTINGS.guidance_scale, seed=SEED)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> WanS2VPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def saved(pipeline, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved")
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(90, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return speech_samples(0.6, seed=3)


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """diffusers copies a folder's loader file into its modules cache: a temporary one here."""
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture(scope="module")
def worker_frames(pipeline, image, audio) -> np.ndarray:
    """The worker's path: `generate`, as backend.py calls it, uint8 frames."""
    portrait = pipeline.encode_portrait(image, SIZE, SIZE)
    return np.concatenate(list(pipeline.generate(portrait, audio, SEED, PROMPT, SETTINGS, lambda *_: None)))


@pytest.fixture(scope="module")
def called(pipeline, image, audio) -> np.ndarray:
    """The diffusers path: the pipeline called, float frames in [0, 1]."""
    return pipeline(image=image, audio=audio, output_type="np", **CALL).frames[0]


def test_the_saved_folder_is_diffusers_layout(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == [LOADER_MODULE, "WanS2VPipeline"]
    assert index["transformer"] == ["model.wan_s2v.transformer", "WanS2VTransformer3DModel"]
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "speech_encoder", "scheduler"):
        assert (saved / name).is_dir(), name
    # each model's folder is its library's own, loadable without this repository
    assert json.loads((saved / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderKLWan"
    assert json.loads((saved / "text_encoder" / "config.json").read_text())["architectures"] == ["UMT5EncoderModel"]
    assert (saved / "speech_encoder" / "preprocessor_config.json").is_file()


def test_calling_it_gives_the_worker_path_frames(called, worker_frames):
    assert called.shape == worker_frames.shape == (10, SIZE, SIZE, 3) and called.dtype == np.float32
    assert np.array_equal((called * 255).astype(np.uint8), worker_frames)


def test_diffusion_pipeline_loads_it_back_and_gives_the_same_frames(pipeline, saved, image, audio, called,
                                                                     modules_cache):
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(saved)
    loaded = DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
    assert type(loaded) is WanS2VPipeline and loaded is not pipeline
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32

    again = loaded(image=Image.fromarray(image), audio=audio, output_type="np", **CALL).frames[0]
    assert np.array_equal(again, called)


def test_the_class_loads_it_without_running_the_folders_code(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the folder's loader file was run")

    monkeypatch.setattr(dynamic_modules_utils, "get_class_from_dynamic_module", refuse)
    loaded = WanS2VPipeline.from_pretrained(saved)
    assert isinstance(loaded.transformer, WanS2VTransformer3DModel)
    assert loaded.text_encoder.tokenizer is loaded.tokenizer
    assert loaded.text_encoder.text_len == loaded.transformer.config.text_len


def test_output_types_are_one_video_in_diffusers_forms():
    pixels = torch.rand(1, 3, 4, 8, 16) * 2.2 - 1.1  # a little beyond [-1, 1], as a decoder gives
    expected = to_uint8_frames(pixels)
    pil = WanS2VPipeline._postprocess(pixels, "pil")[0]
    assert [frame.size for frame in pil] == [(16, 8)] * 4
    assert np.array_equal(np.stack([np.asarray(frame) for frame in pil]), expected)
    unit = WanS2VPipeline._postprocess(pixels, "np")
    assert unit.shape == (1, 4, 8, 16, 3) and unit.min() >= 0 and unit.max() <= 1
    assert np.array_equal((unit[0] * 255).astype(np.uint8), expected)
    assert torch.equal(WanS2VPipeline._postprocess(pixels, "pt"), torch.from_numpy(unit).permute(0, 1, 4, 2, 3))


class _Recorded(Exception):
    pass


def test_the_scheduler_component_picks_the_solver_and_its_shift(pipeline, image, audio, monkeypatch):
    seen = []

    def record(portrait, speech, seed, prompt, settings, on_progress):
        seen.append((seed, settings))
        raise _Recorded

    monkeypatch.setattr(pipeline, "generate_pixels", record)
    with pytest.raises(_Recorded):
        pipeline(image=image, audio=audio, **CALL)
    assert seen[-1] == (SEED, SETTINGS)  # UniPC, shift 3: the worker's defaults

    default_scheduler = pipeline.scheduler
    try:
        pipeline.scheduler = DPMSolverMultistepScheduler.from_config(default_scheduler.config, flow_shift=5.0)
        with pytest.raises(_Recorded):
            pipeline(image=image, audio=audio, **dict(CALL, seed=None), generator=torch.Generator().manual_seed(11))
        assert seen[-1] == (11, dataclasses.replace(SETTINGS, solver="dpm++", shift=5.0))

        pipeline.scheduler = FlowMatchEulerDiscreteScheduler()
        with pytest.raises(ValueError, match="UniPCMultistepScheduler, DPMSolverMultistepScheduler"):
            pipeline(image=image, audio=audio, **CALL)
    finally:
        pipeline.scheduler = default_scheduler


@pytest.mark.parametrize("arguments, message", [
    (dict(image=np.zeros((64, 64), np.uint8)), "image must be"),
    (dict(audio=np.zeros((2, 100), np.float32)), "audio must be"),
    (dict(audio=np.zeros(0, np.float32)), "audio must be"),
    (dict(height=60), "height must be a positive multiple of 64"),
    (dict(width=None), "both height and width"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(output_type="latent"), "output_type"),
])
def test_bad_arguments_are_refused_by_name(pipeline, image, audio, arguments, message):
    call = dict(CALL, image=image, audio=audio) | arguments
    with pytest.raises(ValueError, match=message):
        pipeline(**call)


def test_a_missing_component_is_named(pipeline, saved, tmp_path):
    components = dict(pipeline.components)
    del components["speech_encoder"]
    with pytest.raises(ValueError, match="missing: speech_encoder"):
        WanS2VPipeline(**components)

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    index = json.loads((saved / "model_index.json").read_text())
    del index["tokenizer"]
    (incomplete / "model_index.json").write_text(json.dumps(index))
    for name in ("transformer", "vae", "text_encoder", "speech_encoder", "scheduler"):
        (incomplete / name).symlink_to(saved / name)
    with pytest.raises(ValueError, match="missing: tokenizer"):
        WanS2VPipeline.from_pretrained(incomplete)


def test_a_text_encoder_without_tokenizer_says_where_to_get_one(pipeline):
    bare = TextEncoder(pipeline.text_encoder.model, None)
    with pytest.raises(ValueError, match="no tokenizer"):
        bare.encode([PROMPT])


def test_the_transformer_declares_diffusers_model_attributes():
    model = tiny_transformer()
    assert WanS2VTransformer3DModel._no_split_modules == ["WanS2VTransformerBlock"]
    assert any(type(block).__name__ == "WanS2VTransformerBlock" for block in model.modules())
    assert WanS2VTransformer3DModel._keep_in_fp32_modules is None

    model.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    skipped = ("patch_embedding", "pose_embedding", "motion_embedding", "token_type_embedding", "text_embedder",
               "time_embedder", "time_proj", "audio_encoder", "norm", "proj_out")
    for name, parameter in model.named_parameters():
        if name.startswith(skipped) or "norm" in name or name.endswith("scale_shift_table"):
            assert parameter.dtype == torch.float32, name
    assert model.blocks[0].ffn.net[2].weight.dtype == torch.bfloat16
    assert model.blocks[0].self_attn.to_q.weight.dtype == torch.bfloat16


# --- the worker's frame batches ---------------------------------------------------------------


class _NoLora:
    """No LoRA: the quality mode does not use it."""

    active = staticmethod(contextlib.nullcontext)


# The fast mode's declaration against its sampler's blocks: tests/test_fast_mode.py (a stream's
# first segment), on the video those tests share, rather than a 30 s generation of its own here.
def test_frame_batches_are_what_generate_yields(pipeline, image):
    mode, seconds = QUALITY, 157 / 16
    backend = WanS2VBackend(pipeline, MemoryMode.FULL, _NoLora())  # type: ignore[arg-type]
    portrait = backend.prepare_portrait(image[:SIZE, :SIZE], SIZE * SIZE)
    # two clips of 2 steps without guidance: the batches do not depend on either
    options = GenerationOptions(seed=SEED, mode=mode, prompt=PROMPT, backend_options=backend.parse_options(
        {"num_inference_steps": 2, "guidance_scale": 1.0}, mode))
    speech = Speech(speech_samples(seconds, seed=3))
    batches = [len(frames) for frames in backend.generate(portrait, speech, options, lambda *_: None)]
    first, later = backend.frame_batches(mode)
    assert len(batches) == 2  # the second one complete too
    assert batches[0] == first and all(size == later for size in batches[1:])
