"""scripts/benchmark_gpu.py's fast-mode run, on tiny CPU models, so that the script a GPU session
runs as one command is known to work before GPU time is spent on it. The numbers it prints on a
CPU mean nothing; the shape of the run does: the random LoRA attaches, the job runs two clips,
every figure is there, split into transformer / VAE, and the script starts from any
folder. Also the attention kernel setting (WAN_ATTENTION_BACKEND): declared, checked, and the same
results with `auto` and `math` on a CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import model.wan_s2v.transformer as transformer_module
from handler.settings import SettingsError, WorkerSettings
from model.declaration import SettingValueError
from model.wan_common.lora import LoraAdapter
from model.wan_common.vae import WanVideoVAE
from model.wan_s2v import fast_pipeline
from model.wan_s2v._transformer_block import ATTENTION_KERNELS, WanS2VTransformerBlock, attention_kernel
from model.wan_s2v.declaration import ATTENTION_BACKEND_SETTING, COMPILE_SETTING, DECLARATION
from model.wan_s2v.lora import LIVE_AVATAR_LORA
from model.wan_s2v.memory import RingPlan, place_rings
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


def test_the_fast_run_reports_every_figure_split_and_runs_the_chosen_kernel(benchmark_gpu, tmp_path, monkeypatch,
                                                                           capsys):
    """One two-clip run (the model tests' time is these runs): every figure, the time split into
    transformer / VAE, and the attention kernel configured (math; `auto` gives the same
    results: test_auto_and_math_attention_give_the_same_block_output) is the one entered."""
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args: 0)
    monkeypatch.setattr(benchmark_gpu, "FAST_PORTRAIT", (80, 72))  # a 64x64 video
    monkeypatch.setattr(benchmark_gpu, "FAST_MAX_AREA", 64 * 64)
    monkeypatch.setattr(benchmark_gpu, "FAST_SAMPLE_STEPS", 2)  # the run's shape does not depend on it; time does
    entered = []
    original_kernel = transformer_module.attention_kernel
    monkeypatch.setattr(transformer_module, "attention_kernel", lambda name: entered.append(name) or
                        original_kernel(name))
    transformer = tiny_transformer()
    transformer.configure_attention("math")
    lora = LoraAdapter.attach(transformer, benchmark_gpu.write_random_lora(tmp_path, transformer.config), 64.0,
                              LIVE_AVATAR_LORA)
    row = benchmark_gpu.benchmark_fast(tiny_pipeline(tmp_path, transformer), lora)
    assert (row["height"], row["width"]) == (64, 64)
    assert row["video_seconds"] == pytest.approx(benchmark_gpu.FAST_SPEECH_SECONDS)
    assert 0 < row["first_block_seconds"] < row["total_seconds"]
    assert np.isfinite(row["gpu_seconds_per_video_second"]) and row["gpu_seconds_per_video_second"] > 0
    assert row["attention_rings"] == "all on the GPU" and not lora.is_active  # no limit on the CPU
    assert set(entered) == {"math"}
    # the wrappers are gone again: the worker's own methods
    assert "forward_block" not in vars(transformer) and "forward" not in vars(transformer)
    assert WanVideoVAE.encode.__qualname__ == "WanVideoVAE.encode"
    assert fast_pipeline.place_rings is place_rings
    parts = [row[f"{part}_seconds_per_video_second"] for part in benchmark_gpu.SplitTimer.PARTS]
    assert parts[0] > 0 and parts[1] > 0
    assert sum(parts) <= row["gpu_seconds_per_video_second"]

    row.update(mode="full", attention="math", compiled=False)
    benchmark_gpu.print_tables([row], "CPU", 1e12)
    printed = capsys.readouterr().out
    assert "full / fast" in printed and "goals:" in printed and "all on the GPU" in printed


def test_a_forced_streamed_ring_is_streamed_and_undone(benchmark_gpu):
    with benchmark_gpu.rings_streamed(1):
        assert fast_pipeline.place_rings(10, 4, 1, 0, None, 0) == RingPlan(3, 4)
        assert fast_pipeline.place_rings(10, 4, 1, 0, 5, 0) == RingPlan(0, 4)
    assert fast_pipeline.place_rings is place_rings and place_rings(10, 4, 1, 0, None, 0) == RingPlan(4, 4)


def test_the_script_finds_the_repository_from_any_folder(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([sys.executable, str(SCRIPT), "--modes", "full"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no CUDA GPU" in done.stderr, done.stderr  # imported, then stopped


def test_the_attention_settings_are_declared_and_checked_at_start():
    settings = {setting.env: setting for setting in DECLARATION.settings}
    backend, compiled = settings[ATTENTION_BACKEND_SETTING], settings[COMPILE_SETTING]
    assert backend.choices == tuple(ATTENTION_KERNELS) and backend.default == "auto"
    assert compiled.kind is bool and compiled.default is False
    assert backend.read({ATTENTION_BACKEND_SETTING: "cudnn"}) == "cudnn"
    with pytest.raises(SettingValueError, match="WAN_ATTENTION_BACKEND='fa9'"):
        backend.read({ATTENTION_BACKEND_SETTING: "fa9"})
    with pytest.raises(SettingsError, match="WAN_ATTENTION_BACKEND='fa9' is not one of auto, math"):
        WorkerSettings.from_env({"MODEL_BACKEND": "wan-s2v", ATTENTION_BACKEND_SETTING: "fa9"})  # the start
    read = WorkerSettings.from_env({"MODEL_BACKEND": "wan-s2v", COMPILE_SETTING: "1"}).backend_settings["wan-s2v"]
    assert read[ATTENTION_BACKEND_SETTING] == "auto" and read[COMPILE_SETTING] is True
    with pytest.raises(ValueError, match="fa9"):
        tiny_transformer().configure_attention("fa9")


def test_auto_and_math_attention_give_the_same_block_output():
    torch.manual_seed(0)
    block = WanS2VTransformerBlock(dim=32, ffn_dim=64, num_heads=2, cross_attn_norm=True, eps=1e-6).eval()
    hidden = torch.randn(1, 10, 32)
    text = torch.randn(1, 5, 32)
    modulation = torch.randn(1, 2, 6, 32) * 0.1
    outputs = {}
    for name in ("auto", "math", "flash", "efficient"):  # the last two fall back to math where they cannot run
        with torch.no_grad(), attention_kernel(name):
            outputs[name] = block(hidden.clone(), text, modulation, 6)
    for name in ("math", "flash", "efficient"):
        torch.testing.assert_close(outputs[name], outputs["auto"], rtol=1e-5, atol=1e-5)


def test_the_benchmark_requirements_pin_the_wan_extra_and_list_every_dependency():
    """requirements-benchmark.txt installs with --no-deps from local wheels: it must agree with
    pyproject.toml's pins and name every distribution they pull in (torch's own excepted)."""
    import importlib.metadata
    import re
    import tomllib

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    root = SCRIPT.parent.parent
    lines = [line.strip() for line in root.joinpath("requirements-benchmark.txt").read_text().splitlines()]
    pinned = {canonical(Requirement(line).name): str(Requirement(line).specifier) for line in lines
              if line and not line.startswith("#")}
    wan = tomllib.loads(root.joinpath("pyproject.toml").read_text())["project"]["optional-dependencies"]["wan"]
    for requirement in map(Requirement, wan):
        if requirement.name != "torch":
            assert pinned[canonical(requirement.name)] == str(requirement.specifier), requirement
    torch_own = {"torch", "triton", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "setuptools"}
    environment = {**default_environment(), "extra": ""}
    pending, seen = list(pinned), set()
    while pending:
        name = pending.pop()
        if name in seen or name in torch_own or name.startswith("nvidia-"):
            continue
        seen.add(name)
        for text in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(canonical(requirement.name))
    assert seen <= set(pinned), f"not in requirements-benchmark.txt: {sorted(seen - set(pinned))}"
