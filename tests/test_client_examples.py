"""The client examples work against a real worker API (the local one stands in for RunPod's)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from runpod_client_examples import TalkingHeadClient, save_video
from tests.conftest import ASSETS, ROOT
from tests.mp4_facts import mp4_facts
from tests.runpod_platform import QueueWorker, RunPodPlatform

SPEECH_SECONDS = 123472 / 16000  # assets/speech.wav


def test_runsync_async_and_batch(plain_worker, tmp_path):
    client = TalkingHeadClient(plain_worker.url, api_key="unused-locally")
    job = client.job_input(str(ASSETS / "portrait.jpg"), str(ASSETS / "speech.wav"), resolution="128*128", seed=1)

    sync = client.runsync(job)
    queued = client.wait(client.submit(job))
    second = client.job_input(str(ASSETS / "portrait.jpg"), str(ASSETS / "speech.wav"), resolution="256*256")
    batch = client.batch([job, second])
    for status in (sync, queued, *batch):
        path = save_video(status, tmp_path)
        assert mp4_facts(path).num_frames == status["output"]["num_frames"]
    # each job of a batch with its own options
    assert batch[0]["output"]["width"] <= 128 < batch[1]["output"]["width"]


def test_command_line_reports_failures(plain_worker, tmp_path):
    ok = subprocess.run(
        [sys.executable, str(ROOT / "runpod_client_examples.py"), "--base-url", plain_worker.url,
         "--image", str(ASSETS / "portrait.jpg"), "--audio", str(ASSETS / "speech.wav"),
         "--resolution", "128*128", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(list(tmp_path.glob("*.mp4"))) == 1
    failed = subprocess.run(
        [sys.executable, str(ROOT / "runpod_client_examples.py"), "--base-url", plain_worker.url,
         "--image", str(ASSETS / "speech.wav"), "--audio", str(ASSETS / "speech.wav"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert failed.returncode == 1 and "UNSUPPORTED_MEDIA" in failed.stderr


def test_the_examples_work_against_an_endpoint_that_streams_results(tmp_path):
    """With STREAM_RESULTS=1 every job's output is a list ([result]): runsync, async and batch
    mode read the result from it, through RunPod's own job loop."""
    platform = RunPodPlatform()
    worker = QueueWorker(platform, {"MODEL_BACKEND": "lite", "STREAM_RESULTS": "1"}, tmp_path / "worker")
    try:
        worker.wait_for_log("worker ready", 60)
        for mode in ("runsync", "async", "batch"):
            out = tmp_path / mode
            out.mkdir()
            run = subprocess.run(
                [sys.executable, str(ROOT / "runpod_client_examples.py"), "--base-url", platform.api_url,
                 "--mode", mode, "--image", str(ASSETS / "portrait.jpg"), "--audio", str(ASSETS / "speech.wav"),
                 "--resolution", "128*128", "--out", str(out), "--speed", "2", "--job-overhead", "30"],
                capture_output=True, text=True, timeout=300, env={**os.environ, "RUNPOD_API_KEY": "unused"},
            )
            assert run.returncode == 0 and "Traceback" not in run.stderr, (mode, run.stderr[-2000:])
            [video] = out.glob("*.mp4")
            assert mp4_facts(video).num_frames > 0 and "s of video" in run.stdout, mode
        assert all(isinstance(result["output"], list) for result in platform.results.values())
        # each job carried RunPod's execution timeout policy, sized from its 7.7 s of speech
        expected_ms = math.ceil(30 + 2 * SPEECH_SECONDS) * 1000
        assert list(platform.policies.values()) == [{"executionTimeout": expected_ms}] * 3
    finally:
        worker.stop()
        platform.close()
