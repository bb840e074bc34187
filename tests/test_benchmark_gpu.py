"""scripts/benchmark_gpu.py's fast-mode run, on tiny CPU models, so that the script a GPU session
runs as one command is known to work before GPU time is spent on it. The numbers it prints on a
CPU mean nothing; the shape of the run does: the random LoRA attaches, the job runs two clips,
and every figure is there."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from model.wan_common.lora import LoraAdapter
from model.wan_s2v.lora import LIVE_AVATAR_LORA
from tests.test_wan_pipeline import tiny_pipeline, tiny_transformer

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark_gpu.py"


@pytest.fixture(scope="module")
def benchmark_gpu():
    spec = importlib.util.spec_from_file_location("benchmark_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_random_lora_covers_every_target_and_attaches(benchmark_gpu, tmp_path):
    transformer = tiny_transformer()
    adapter = LoraAdapter.attach(transformer, benchmark_gpu.write_random_lora(tmp_path, transformer.config), 64.0,
                                LIVE_AVATAR_LORA)
    layers = transformer.config.num_layers
    assert adapter.summary.rank == benchmark_gpu.LORA_RANK
    assert adapter.summary.layers == layers * 10 + len(transformer.config.audio_inject_layers) * 4


def test_the_fast_run_reports_every_figure(benchmark_gpu, tmp_path, monkeypatch):
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args: 0)
    monkeypatch.setattr(benchmark_gpu, "FAST_PORTRAIT", (80, 72))  # a 64x64 video
    monkeypatch.setattr(benchmark_gpu, "FAST_MAX_AREA", 64 * 64)
    monkeypatch.setattr(benchmark_gpu, "FAST_SAMPLE_STEPS", 2)  # the run's shape does not depend on it; time does
    transformer = tiny_transformer()
    lora = LoraAdapter.attach(transformer, benchmark_gpu.write_random_lora(tmp_path, transformer.config), 64.0,
                                LIVE_AVATAR_LORA)
    row = benchmark_gpu.benchmark_fast(tiny_pipeline(tmp_path, transformer), lora)
    assert (row["height"], row["width"]) == (64, 64)
    assert row["video_seconds"] == pytest.approx(benchmark_gpu.FAST_SPEECH_SECONDS)
    assert 0 < row["first_block_seconds"] < row["total_seconds"]
    assert np.isfinite(row["gpu_seconds_per_video_second"]) and row["gpu_seconds_per_video_second"] > 0
    assert row["attention_rings"] == "on cpu" and not lora.is_active
