"""The client examples work against a real worker API (the local one stands in for RunPod's)."""

from __future__ import annotations

import subprocess
import sys

from runpod_client_examples import TalkingHeadClient, save_video
from tests.conftest import ASSETS, ROOT
from tests.mp4_facts import mp4_facts


def test_runsync_async_and_batch(plain_worker, tmp_path):
    client = TalkingHeadClient(plain_worker.url, api_key="unused-locally")
    job = client.job_input(str(ASSETS / "portrait.jpg"), str(ASSETS / "speech.wav"), resolution="256*256", seed=1)

    sync = client.runsync(job)
    queued = client.wait(client.submit(job))
    second = client.job_input(str(ASSETS / "portrait.jpg"), str(ASSETS / "speech.wav"), resolution="128*128")
    batch = client.batch([job, second])
    for status in (sync, queued, *batch):
        path = save_video(status, tmp_path)
        assert mp4_facts(path).num_frames == status["output"]["num_frames"]
    assert batch[1]["output"]["width"] <= 128


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
