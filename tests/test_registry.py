"""The registry lists backend declarations; nothing outside a backend's sub-package names it."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model.declaration import Setting, SettingValueError, Speed
from model.registry import BACKEND_PACKAGES, BACKENDS

ROOT = Path(__file__).resolve().parent.parent
# Scripts that measure one model's own internals, and say which in their name or docstring
# (benchmark_gpu.sh runs the GPU ones by their backends' names).
MODEL_SPECIFIC_SCRIPTS = {"benchmark_gpu.py", "benchmark_gpu.sh", "benchmark_infinitetalk.py",
                          "benchmark_omniavatar.py", "benchmark_lite.py", "measure_loader_memory.py",
                          "benchmark_fast_vae.py", "measure_fast_vae_memory.py"}


def test_handler_and_scripts_name_no_backend():
    names = {name for name in BACKENDS} | {package.rsplit(".", 1)[1] for package in BACKEND_PACKAGES}
    alternatives = "|".join(re.escape(name) for name in names)
    pattern = re.compile(rf"""["'.]({alternatives})["'.\s]""")
    files = [*ROOT.joinpath("handler").glob("*.py"), *ROOT.joinpath("scripts").glob("*.py"),
             *ROOT.joinpath("scripts").glob("*.sh"), ROOT / "deploy_runpod.sh"]
    offenders = []
    for path in files:
        if path.name in MODEL_SPECIFIC_SCRIPTS:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_reading_the_registry_imports_neither_torch_nor_numpy():
    check = ("import sys, model.registry, scripts.endpoint_compute; "
             "print(sorted(m for m in ('torch', 'numpy', 'diffusers', 'cv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_declaration_is_consistent():
    for entry in BACKENDS.values():
        assert entry.modes and set(entry.frame_batches) == set(entry.modes), entry.name
        assert all(entry.frame_rate(mode) > 0 for mode in entry.modes), entry.name
        assert all(first > 0 and later > 0 for first, later in entry.frame_batches.values()), entry.name
        assert entry.deploy.disk_gb_with_volume <= entry.deploy.disk_gb_without_volume, entry.name
        for spec in entry.weights:
            assert spec.folder and "/" not in spec.folder and spec.repo_id.count("/") == 1, spec
            assert set(spec.modes) <= set(entry.modes), spec
        assert len({setting.env for setting in entry.settings}) == len(entry.settings), entry.name


def test_wan_s2vs_declared_frame_batches_are_its_samplers():
    from model.wan_s2v import fast_pipeline, pipeline
    from model.wan_s2v.config import FRAMES_PER_CLIP

    declared = BACKENDS["wan-s2v"].frame_batches
    assert declared["quality"] == (FRAMES_PER_CLIP - pipeline.FIRST_CLIP_DROPPED_FRAMES, FRAMES_PER_CLIP)
    block = fast_pipeline.FRAMES_PER_BLOCK
    assert declared["fast"] == (block - fast_pipeline.FIRST_CLIP_DROPPED_FRAMES, block)


def test_wan_s2vs_declared_frame_rates_are_its_samplers():
    """The handler's rate per mode (MP4, segments, result) is the one each sampler times its
    speech with: Wan2.2-S2V's 16 fps in quality, Live Avatar's 25 in fast."""
    from model.wan_s2v import config

    declared = BACKENDS["wan-s2v"]
    assert (declared.frame_rate("quality"), declared.frame_rate("fast")) == (config.FPS, config.FAST_FPS) == (16, 25)


def test_a_declaration_states_one_rate_or_one_per_mode():
    from model.lite.declaration import DECLARATION as LITE

    two_modes = {"modes": ("quality", "fast"), "frame_batches": {"quality": (1, 1), "fast": (1, 1)},
                 "deploy": dataclasses.replace(LITE.deploy, speeds=dict.fromkeys(("quality", "fast"), Speed(1, 8, 8)))}
    one_rate = dataclasses.replace(LITE, **two_modes, fps=30)
    assert (one_rate.frame_rate("quality"), one_rate.frame_rate("fast")) == (30.0, 30.0)
    per_mode = dataclasses.replace(LITE, **two_modes, fps={"quality": 16, "fast": 25})
    assert (per_mode.frame_rate("quality"), per_mode.frame_rate("fast")) == (16.0, 25.0)
    with pytest.raises(ValueError, match="fps must be one rate or name each of its modes"):
        dataclasses.replace(LITE, **two_modes, fps={"quality": 16})
    with pytest.raises(ValueError, match="every fps must be a positive, finite number"):
        dataclasses.replace(LITE, fps=0)


@pytest.mark.parametrize(("setting", "raw", "message"), [
    (Setting("N", int, 4, "n", low=0, high=100), "101", "N='101' must be between 0 and 100."),
    (Setting("N", int, 4, "n", low=1), "0", "N='0' must be at least 1."),
    (Setting("N", int, 4, "n", low=1), "many", "N='many' is not a whole number."),
    (Setting("F", float, 1.0, "f"), "inf", "F='inf' must be a positive, finite number."),
    (Setting("F", float, 1.0, "f"), "-1", "F='-1' must be a positive, finite number."),
    (Setting("F", float, 1.0, "f"), "soon", "F='soon' is not a number."),
    (Setting("C", str, None, "c", choices=("a", "b")), "z", "C='z' is not one of a, b."),
])
def test_a_setting_refuses_a_bad_value_naming_it(setting, raw, message):
    with pytest.raises(SettingValueError) as refused:
        setting.read({setting.env: raw})
    assert str(refused.value) == message


def test_a_setting_reads_its_value_or_its_default():
    assert Setting("N", int, 4, "n", low=0).read({}) == 4
    assert Setting("N", int, 4, "n", low=0).read({"N": " 7 "}) == 7
    assert Setting("B", bool, False, "b").read({"B": "Yes"}) is True
    assert Setting("B", bool, False, "b").read({"B": "0"}) is False
    assert Setting("C", str, None, "c", choices=("a",)).read({"C": ""}) is None
