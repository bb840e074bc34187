"""Work that must stop: RunPod's cancel and a worker stop end generation within a frame batch, and
a machine that cannot run the model leaves the pool.

Through the SDK's own job loop (`python -m handler` with RunPod's variables set), taking jobs from
a RunPod queue on 127.0.0.1 (tests/runpod_platform.py); the client is runpod_client_examples.
"""

from __future__ import annotations

import base64
import math
import re
import signal
import time

import numpy as np
import pytest
import soundfile

from handler.cancel import STOP_WAIT_SECONDS
from handler.sample import sample_job_input
from runpod_client_examples import TalkingHeadClient
from tests.conftest import ASSETS
from tests.runpod_platform import QueueWorker, RunPodPlatform

JPEG_B64 = base64.b64encode((ASSETS / "portrait.jpg").read_bytes()).decode()
LONG_SPEECH_SECONDS = 240
LITE_FPS = 25


@pytest.fixture
def platform():
    platform = RunPodPlatform()
    yield platform
    platform.close()


@pytest.fixture(scope="module")
def long_speech_url(media_server) -> str:
    """Four minutes of speech: the lite worker needs about half a minute to render it."""
    base, folder = media_server
    speech, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    repeats = math.ceil(LONG_SPEECH_SECONDS * rate / len(speech))
    soundfile.write(folder / "long_speech.wav", np.tile(speech, repeats)[: LONG_SPEECH_SECONDS * rate], rate)
    return f"{base}/long_speech.wav"


def _long_job(url: str) -> dict:
    return {"audio_url": url, "image_file": JPEG_B64, "resolution": "832*480", "output_type": "base64"}


def _generating(platform: RunPodPlatform, job_id: str):
    return lambda: any(update.get("stage") == "generate" for update in platform.progress.get(job_id, []))


def _stopped_at_frame(log: str, job_id: str) -> int:
    match = re.search(rf"job {job_id}: generation stops at frame (\d+)/(\d+)", log)
    assert match, log[-3000:]
    assert int(match.group(2)) == LONG_SPEECH_SECONDS * LITE_FPS
    return int(match.group(1))


def test_a_cancelled_job_stops_within_a_frame_batch_and_the_worker_takes_the_next(platform, long_speech_url, tmp_path):
    worker = QueueWorker(platform, {"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1"}, tmp_path)
    try:
        client = TalkingHeadClient(platform.api_url, api_key="fake-key-for-the-local-platform")
        job_id = client.submit(_long_job(long_speech_url))
        platform.wait_for(_generating(platform, job_id), 60, "generation to start")

        # The client gives up waiting: it cancels the job, and RunPod tells the worker to stop it.
        with pytest.raises(TimeoutError, match="cancelled it"):
            client.wait(job_id, timeout_seconds=0.1)
        assert client.status(job_id)["status"] == "CANCELLED"
        platform.wait_for(lambda: job_id in platform.stop_delivered_at, 10, "the stop to reach the worker")
        stopped = worker.wait_for_log(f"job {job_id} stopped", STOP_WAIT_SECONDS)
        seconds_to_stop = stopped - platform.stop_delivered_at[job_id]
        print(f"cancel delivered -> job stopped and its files removed: {seconds_to_stop:.2f} s")

        log = worker.log()
        # Counted in frames, not seconds: a job that missed the stop would render all of them, and
        # a load that slows the stop slows the rendering with it.
        frame = _stopped_at_frame(log, job_id)
        assert frame < LONG_SPEECH_SECONDS * LITE_FPS / 2, "the job was stopped early in its generation"
        after_stop = log[log.index(f"job {job_id} stopped"):]
        assert f"job {job_id} progress" not in after_stop, "no frame was generated after the stop"
        assert "was cancelled but is still running" not in log
        assert seconds_to_stop < STOP_WAIT_SECONDS, seconds_to_stop  # the handler's own bound on a stop
        assert worker.leftovers() == [], "the job's temporary files are gone"
        assert job_id not in platform.results, "a cancelled job sends no result"

        # The same worker takes the next job and finishes it.
        done = client.wait(client.submit(sample_job_input(resolution="128*128")), 60)
        assert done["status"] == "COMPLETED", done
        assert base64.b64decode(done["output"]["video_base64"])[4:8] == b"ftyp"
        assert worker.leftovers() == []
    finally:
        worker.stop()


def test_a_worker_stop_ends_the_running_job_and_removes_its_files(platform, long_speech_url, tmp_path):
    worker = QueueWorker(platform, {"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1"}, tmp_path)
    try:
        job_id = platform.submit(_long_job(long_speech_url))
        platform.wait_for(_generating(platform, job_id), 60, "generation to start")
        signalled = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        result = platform.wait_for(lambda: platform.results.get(job_id), STOP_WAIT_SECONDS, "the stopped job's result")
        seconds_to_stop = time.monotonic() - signalled
        worker.process.wait(timeout=30)
        print(f"SIGTERM -> job stopped, its result sent: {seconds_to_stop:.2f} s; worker exited "
              f"{time.monotonic() - signalled:.2f} s after the signal")

        assert result["error"].startswith(
            "INTERNAL: the job was stopped before it finished: the worker received SIGTERM and is shutting down."
        ), result
        assert _stopped_at_frame(worker.log(), job_id) < LONG_SPEECH_SECONDS * LITE_FPS / 2
        assert seconds_to_stop < STOP_WAIT_SECONDS, seconds_to_stop
        assert worker.leftovers() == []
    finally:
        worker.stop()


UNFIT_MACHINE = '''
import model.registry
from model.base import HostUnfitError


def load_backend(name, model_dir, memory_mode=None):
    raise HostUnfitError("no CUDA device is visible on this machine (simulated by the test)")


model.registry.load_backend = load_backend
'''


def test_a_machine_that_cannot_run_the_model_leaves_the_pool(platform, tmp_path):
    """The model reports a host fault at start: the worker fails RunPod's fitness check and exits,
    so that RunPod starts one elsewhere; it never takes a job to fail it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(UNFIT_MACHINE)
    job_id = platform.submit(sample_job_input(resolution="256*256"))
    started = time.monotonic()
    worker = QueueWorker(platform, {"MODEL_BACKEND": "lite"}, tmp_path, extra_pythonpath=(site,))
    try:
        assert worker.process.wait(timeout=60) == 1
        print(f"the unfit worker left in {time.monotonic() - started:.2f} s")
        unhealthy = [ping for ping in platform.pings if ping.get("status") == "unhealthy"]
        assert len(unhealthy) == 1, platform.pings
        assert unhealthy[0]["check"] == "model_runs_on_this_machine"
        assert "no CUDA device is visible on this machine" in unhealthy[0]["reason"]
        assert platform.job_takes == 0 and platform.status[job_id] == "IN_QUEUE"
    finally:
        worker.stop()


def test_a_setting_wrong_everywhere_keeps_failing_jobs_clearly(platform, tmp_path):
    worker = QueueWorker(platform, {"MODEL_BACKEND": "bogus"}, tmp_path)
    try:
        job_id = platform.submit(sample_job_input(resolution="256*256"))
        result = platform.wait_for(lambda: platform.results.get(job_id), 60, "the job's result")
        assert result["error"].startswith("MODEL_UNAVAILABLE: MODEL_BACKEND='bogus' is unknown"), result
        assert worker.process.poll() is None, "the worker stays, and reports the setting on every job"
        assert not [ping for ping in platform.pings if ping.get("status") == "unhealthy"]
    finally:
        worker.stop()


def test_an_unforeseen_fault_while_loading_is_the_machines(monkeypatch):
    import handler.startup

    def load_backend(name, model_dir, memory_mode=None):
        raise RuntimeError("CUDA error: uncorrectable ECC error encountered")

    monkeypatch.setattr(handler.startup, "load_backend", load_backend)
    worker = handler.startup.start_worker({"MODEL_BACKEND": "lite"})
    assert worker.host_fault == (
        "the model could not be loaded on this machine (RuntimeError; the worker's log has the details)."
    )
    error = worker.handle({"id": "j", "input": sample_job_input()})["error"]
    assert error.startswith("MODEL_UNAVAILABLE: the model could not be loaded on this machine"), error
