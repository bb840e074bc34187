"""scripts/benchmark_infinitetalk.py and scripts/benchmark_omniavatar.py run their whole path on
tiny CPU models (the hidden --tiny flag), so that the command a person with a GPU runs is known to
work before GPU time is spent on it. The numbers mean nothing on a CPU; the shape of the run does:
every run is made, every figure is printed and written, the fast runs have the random lightx2v
LoRA attached, and without a GPU each script refuses with a sentence and exit status 1."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from model.infinitetalk.lora import attach_lightx2v_lora
from model.infinitetalk.transformer import InfiniteTalkTransformer3DModel
from model.wan_common.lora import LoraAdapter
from scripts import benchmark_infinitetalk, benchmark_omniavatar
from scripts.benchmark_common import NO_CUDA

INFINITETALK_FIGURES = ("seconds_per_step", "first_clip_seconds", "gpu_seconds_per_video_second",
                        "transformer_seconds_per_video_second", "vae_seconds_per_video_second",
                        "colour_seconds_per_video_second", "peak_gpu_gib")
OMNIAVATAR_FIGURES = ("seconds_per_step", "vae_seconds_per_chunk", "gpu_seconds_per_video_second", "peak_gpu_gib")


@pytest.fixture(scope="module")
def infinitetalk_run(tmp_path_factory):
    """One tiny InfiniteTalk run: quality and fast, one and two speakers, at one size."""
    path = tmp_path_factory.mktemp("infinitetalk") / "out.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = benchmark_infinitetalk.main(["--tiny", "--modes", "full", "--sizes", "640x640", "--json", str(path)])
    return status, printed.getvalue(), json.loads(path.read_text())


def test_the_infinitetalk_run_makes_every_run_and_figure(infinitetalk_run):
    status, printed, written = infinitetalk_run
    assert status == 0
    rows = written["results"]
    assert [(row["generation"], row["speakers"]) for row in rows] == [("quality", 1), ("quality", 2), ("fast", 1),
                                                                       ("fast", 2)]
    for row in rows:
        assert "error" not in row, row
        assert (row["mode"], row["size"], row["height"], row["width"]) == ("full", "640x640", 32, 32)
        assert all(math.isfinite(row[name]) and row[name] >= 0 for name in INFINITETALK_FIGURES)
        assert row["seconds_per_step"] > 0 and row["first_clip_seconds"] > 0
    quality, fast = rows[0], rows[2]
    assert (quality["steps_timed"], quality["steps_counted"], quality["extrapolated"]) == (3, 40, True)
    assert (fast["steps_timed"], fast["steps_counted"], fast["extrapolated"]) == (4, 4, False)
    for heading in ("s/step", "first clip s", "GPU s/video s", "transformer", "VAE", "colour", "peak GiB",
                    "full / quality", "full / fast", "3->40"):
        assert heading in printed
    assert "extrapolated to 40" in printed
    assert "goal: fast <= 4 GPU s per video s at 480p (640x640, 832x448) on an H100" in printed
    assert printed.count("(not an H100)") == 2  # a verdict on each fast run, none on the quality runs
    assert "umT5, CLIP and wav2vec2 not loaded" in written["notes"][0]


def test_the_random_lora_covers_every_block_linear_and_attaches_as_the_backend_attaches(tmp_path):
    transformer = InfiniteTalkTransformer3DModel(**benchmark_infinitetalk.TINY.transformer)
    adapter = attach_lightx2v_lora(transformer, benchmark_infinitetalk.write_random_lora(tmp_path, transformer))
    assert isinstance(adapter, LoraAdapter)
    assert adapter.summary.rank == benchmark_infinitetalk.LORA_RANK == 32
    assert adapter.summary.layers == transformer.config.num_layers * len(benchmark_infinitetalk.LORA_TARGETS)


def test_the_omniavatar_run_times_both_sizes_and_prints_the_goals(tmp_path, capsys):
    path = tmp_path / "out.json"
    assert benchmark_omniavatar.main(["--tiny", "--modes", "full", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(path.read_text())["results"]
    assert [(row["size"], row["mode"]) for row in rows] == [("14B", "full"), ("1.3B", "full")]
    for row in rows:
        assert "error" not in row, row
        assert (row["chunk_frames"], row["passes_per_step"], row["steps_timed"], row["steps_counted"]) == (9, 2, 3, 50)
        assert all(math.isfinite(row[name]) and row[name] >= 0 for name in OMNIAVATAR_FIGURES)
        assert row["seconds_per_step"] > 0
    for heading in ("s/step", "VAE s/chunk", "GPU s/video s", "peak GiB", "32x32x9", "extrapolated to 50"):
        assert heading in printed
    assert "goals: 14B <= 8 s per step at 720x720, 30000 tokens on an H100" in printed
    assert "14B full:" in printed and "s per step: goal" in printed
    assert "1.3B full:" in printed and "x faster than the 14B: goal" in printed


@pytest.mark.parametrize("script", [benchmark_infinitetalk, benchmark_omniavatar])
def test_without_a_gpu_each_script_refuses_with_a_sentence(script, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert script.main([]) == 1
    assert NO_CUDA in capsys.readouterr().err
