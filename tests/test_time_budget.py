"""A job is sized against the endpoint's execution timeout before rendering (model/speed.py)."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
import soundfile

from handler.sample import sample_job_input
from handler.startup import start_worker
from model.registry import BACKENDS
from model.speed import estimate, execution_timeout

SPEECH_SECONDS = 123472 / 16000  # assets/speech.wav
# lite at 128*128: under its 512*512 reference, so the declared default applies unscaled
AREA = 128 * 128


def speech_of(seconds: float) -> str:
    samples = np.random.default_rng(0).uniform(-0.3, 0.3, int(seconds * 16000)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def budget() -> int:
    """An execution timeout that fits the sample speech plus half a second, and no more."""
    expected = estimate(BACKENDS["lite"], "quality", AREA, "cpu")
    return int(expected.seconds(SPEECH_SECONDS + 0.5))


def test_speech_that_fits_the_budget_is_rendered(budget):
    worker = start_worker({"MODEL_BACKEND": "lite", "EXECUTION_TIMEOUT_SECONDS": str(budget)})
    result = worker.handle({"id": "fits", "input": sample_job_input(resolution="128*128")})
    assert result.get("success") is True, result


def test_speech_a_second_too_long_is_refused_before_the_portrait_naming_the_longest_that_fits(budget, caplog):
    worker = start_worker({"MODEL_BACKEND": "lite", "EXECUTION_TIMEOUT_SECONDS": str(budget)})
    expected = estimate(BACKENDS["lite"], "quality", AREA, "cpu")
    longest = expected.longest_speech(budget)
    with caplog.at_level(logging.INFO):
        result = worker.handle({"id": "long", "input": sample_job_input(
            resolution="128*128", audio_file=speech_of(longest + 1.0))})
    error = result["error"]
    assert error.startswith(f"TOO_LARGE: audio_file: the speech is {longest + 1.0:.1f} s"), error
    assert f"(EXECUTION_TIMEOUT_SECONDS={budget}) fits at most {longest:.1f} s" in error
    assert "raise the endpoint's execution timeout" in error
    # refused after the speech was decoded, before the portrait or the model did anything
    assert "portrait ready" not in caplog.text and "frame" not in caplog.text


def test_without_a_budget_nothing_is_refused_for_its_length():
    worker = start_worker({"MODEL_BACKEND": "lite"})
    assert worker.settings.execution_timeout_seconds is None
    result = worker.handle({"id": "free", "input": sample_job_input(resolution="128*128",
                                                                    audio_file=speech_of(12.0))})
    assert result.get("success") is True, result


def test_the_planned_timeout_fits_the_longest_speech_the_worker_accepts():
    for entry in BACKENDS.values():
        for mode in entry.modes:
            area = entry.default_max_area(mode)
            timeout = execution_timeout(entry, mode, area, 300.0, ("an unmeasured device",))
            expected = estimate(entry, mode, area, "an unmeasured device")
            assert expected.longest_speech(timeout) >= 300.0 > expected.longest_speech(timeout - 2)


def test_a_measured_gpu_is_sized_by_its_figures_and_larger_videos_by_the_area_power():
    wan = BACKENDS["wan-s2v"]
    h100 = estimate(wan, "quality", 832 * 448, "NVIDIA H100 80GB HBM3", "full")
    assert h100.seconds_per_video_second == 50.4 and "H100" in h100.basis  # data/costs.toml's row
    bigger = estimate(wan, "quality", 2 * 832 * 448, "NVIDIA H100 80GB HBM3", "full")
    assert bigger.seconds_per_video_second == pytest.approx(50.4 * 2**1.5)
    # the measured pair of sizes follows the power it scales by, within a tenth
    large = estimate(wan, "quality", 1280 * 704, "H100", "full").seconds_per_video_second
    assert large / 50.4 == pytest.approx((1280 * 704 / (832 * 448)) ** 1.5, rel=0.1)
    unmeasured = estimate(wan, "quality", 832 * 448, "NVIDIA L40S")
    assert unmeasured.seconds_per_video_second == wan.deploy.speeds["quality"].seconds_per_video_second
    assert unmeasured.seconds_per_video_second > h100.seconds_per_video_second


def test_the_readmes_time_budget_table_is_the_one_the_figures_give():
    from scripts.time_budget import markdown
    from tests.conftest import ROOT

    assert markdown() in ROOT.joinpath("README.md").read_text()
