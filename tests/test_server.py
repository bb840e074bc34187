"""The always-on server (`python -m handler.http_server`) over real HTTP on 127.0.0.1: the old box's curl
form and the contract's JSON give MP4s that play and seek from download_url; /health, the bounded
queue, the contract's codes with their HTTP statuses, retention, and no files or secrets left behind."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile

from tests.conftest import ASSETS, ROOT, free_port
from tests.mp4_facts import mp4_facts

SPEECH_SECONDS = 123472 / 16000  # assets/speech.wav
RETENTION_SECONDS = 4  # the retention test waits it out; every download here follows its reply at once
MAX_INPUT_BYTES = 6 * 1024 * 1024
SPEECH, PORTRAIT = (ASSETS / "speech.wav").read_bytes(), (ASSETS / "portrait.jpg").read_bytes()
SAMPLE_FILES = {"audio_file": SPEECH, "image_file": PORTRAIT}
# Posts a long job as a separate process, so that killing it is a client hanging up.
CLIENT = """
import sys, requests
url, audio, image = sys.argv[1:4]
with open(audio, "rb") as a, open(image, "rb") as i:
    reply = requests.post(url, files={"audio_file": a, "image_file": i}, timeout=600)
print(reply.status_code)
print(reply.text)
"""


# `python -m handler.http_server ARGS` with its model load held until the file GATE exists.
HELD_SERVER = """
import sys, time
from pathlib import Path
import handler.http_server as server
gate, start = Path(sys.argv[1]), server.start_worker
def held_start():
    while not gate.exists():
        time.sleep(0.05)
    return start()
server.start_worker = held_start
server.main(sys.argv[2:])
"""


class ServerProcess:
    """`python -m handler.http_server` on 127.0.0.1 with its own TMPDIR and log."""

    def __init__(self, env: dict[str, str], workdir: Path, python_path: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(parents=True)
        self.log_path = workdir / "server.log"
        ours = ("BUCKET_", "RUNPOD_", "SERVER_")
        full_env = {key: value for key, value in os.environ.items() if not key.startswith(ours)}
        full_env.update(env, TMPDIR=str(self.tmpdir), PYTHONPATH=os.pathsep.join((str(ROOT), *python_path)))
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "handler.http_server", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=workdir, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not self._answers():
            assert self.process.poll() is None, f"the server exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"the server did not start within 120 s:\n{self.log()}"
            time.sleep(0.2)

    def _answers(self) -> bool:
        with contextlib.suppress(requests.ConnectionError):
            return requests.get(f"{self.url}/ping", timeout=5).status_code in (200, 503)  # 204: still loading
        return False

    def health(self) -> dict:
        return requests.get(f"{self.url}/health", timeout=10).json()

    def wait_for_health(self, predicate, what: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while not predicate(health := self.health()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {health}\n{self.log()[-2000:]}"
            time.sleep(0.1)
        return health

    def leftovers(self) -> list[Path]:
        return sorted(self.tmpdir.rglob("*"))

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    process = ServerProcess({
        "MODEL_BACKEND": "lite", "SERVER_QUEUE_SIZE": "1", "SERVER_DOWNLOAD_RETENTION_SECONDS": str(RETENTION_SECONDS),
        "MAX_INPUT_BYTES": str(MAX_INPUT_BYTES),
    }, tmp_path_factory.mktemp("server"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> Path:
    """Two minutes of speech: the lite backend needs several seconds for it."""
    speech, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    path = tmp_path_factory.mktemp("speech") / "long.wav"
    soundfile.write(path, np.tile(speech, math.ceil(120 * rate / len(speech)))[: 120 * rate], rate)
    return path


def _start_client(server: ServerProcess | str, audio: Path) -> subprocess.Popen:
    url = server if isinstance(server, str) else server.url
    command = [sys.executable, "-c", CLIENT, f"{url}/generate", str(audio), str(ASSETS / "portrait.jpg")]
    return subprocess.Popen(command,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _download(reply: dict, tmp_path: Path) -> Path:
    response = requests.get(reply["download_url"], timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "video/mp4"
    assert int(response.headers["Content-Length"]) == reply["file_size_bytes"] == len(response.content)
    path = tmp_path / f"{reply['request_id']}.mp4"
    path.write_bytes(response.content)
    return path


def _assert_plays(path: Path, reply: dict) -> None:
    facts = mp4_facts(path)
    assert (facts.video_codec, facts.pixel_format, facts.audio_codec) == ("h264", "yuv420p", "aac")
    assert facts.moov_before_mdat
    assert (facts.width, facts.height, facts.num_frames) == (reply["width"], reply["height"], reply["num_frames"])
    assert facts.fps == reply["fps"]
    assert abs(facts.video_seconds - SPEECH_SECONDS) <= 1.0 / facts.fps
    assert abs(facts.audio_seconds - SPEECH_SECONDS) <= 0.05


def _assert_result(reply: dict) -> None:
    assert reply["success"] is True and reply["request_id"].startswith("srv-")
    assert reply["download_url"].startswith("http://127.0.0.1:")
    assert "video_base64" not in reply and "video_url" not in reply
    assert reply["model"] == "lite" and reply["mode"] == "quality"
    assert reply["gpu"] == "cpu"
    assert 0 < reply["gpu_seconds"] == reply["generation_time_seconds"]
    assert reply["gpu_seconds"] >= sum(reply["timings"].values()) - 0.01


def test_the_old_boxs_curl_form_gives_a_video_that_plays_and_seeks(server, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed; the JSON and requests-form tests cover the server")
    sent = subprocess.run(
        [curl, "-sS", "--max-time", "120",
         "-F", f"audio_file=@{ASSETS / 'speech.wav'}", "-F", f"image_file=@{ASSETS / 'portrait.jpg'}",
         "-F", "prompt=A person speaking", "-F", "seed=7", "-F", "resolution=128*128", f"{server.url}/generate"],
        capture_output=True, text=True, timeout=150, check=True,
    )
    reply = json.loads(sent.stdout)
    _assert_result(reply)
    assert reply["seed"] == 7 and max(reply["width"], reply["height"]) <= 128
    path = _download(reply, tmp_path)
    _assert_plays(path, reply)

    data = path.read_bytes()
    part = requests.get(reply["download_url"], headers={"Range": "bytes=100-1099"}, timeout=30)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    assert part.headers["Accept-Ranges"] == "bytes"
    assert part.content == data[100:1100]
    tail = requests.get(reply["download_url"], headers={"Range": "bytes=-500"}, timeout=30)
    assert tail.status_code == 206 and tail.content == data[-500:]
    beyond = requests.get(reply["download_url"], headers={"Range": f"bytes={len(data)}-"}, timeout=30)
    assert beyond.status_code == 416


@pytest.mark.parametrize("envelope", ["input", "bare"])
def test_the_contracts_json_body_gives_a_video_that_plays(server, tmp_path, envelope):
    job_input = {
        "audio_file": base64.b64encode((ASSETS / "speech.wav").read_bytes()).decode(),
        "image_file": "data:image/jpeg;base64," + base64.b64encode((ASSETS / "portrait.jpg").read_bytes()).decode(),
        "seed": 11,
    }
    # the default size once; the bare envelope asks for the smallest (the size is not what it proves)
    size = (512, 512) if envelope == "input" else (128, 128)
    if envelope == "bare":
        job_input["resolution"] = "128*128"
    body = {"input": job_input} if envelope == "input" else job_input
    reply = requests.post(f"{server.url}/generate", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    reply = reply.json()
    _assert_result(reply)
    assert reply["seed"] == 11 and (reply["width"], reply["height"]) == size
    _assert_plays(_download(reply, tmp_path), reply)


def test_output_type_base64_also_comes_inline(server, tmp_path):
    data = {"output_type": "base64", "resolution": "128*128"}
    reply = requests.post(f"{server.url}/generate", files=SAMPLE_FILES, data=data, timeout=120)
    assert reply.status_code == 200, reply.text
    reply = reply.json()
    assert base64.b64decode(reply["video_base64"]) == _download(reply, tmp_path).read_bytes()


def test_health_while_a_job_runs_and_the_full_queue_gets_429(server, long_speech):
    before = server.health()
    assert before == {"status": "ok", "busy": False, "queued": 0, "queue_size": 1, "receiving": 0, "backend": "lite",
                      "gpu": "cpu", "modes": ["quality"], "default_mode": "quality",
                      "live_sessions": 0, "live_capacity": 4}
    running = _start_client(server, long_speech)
    waiting = None
    try:
        server.wait_for_health(lambda health: health["busy"], "the first job to run")
        waiting = _start_client(server, long_speech)
        during = server.wait_for_health(lambda health: health["queued"] == 1, "the second job to wait")
        assert during["busy"] is True and during["status"] == "ok"

        refused = requests.post(f"{server.url}/generate", files=SAMPLE_FILES, timeout=30)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["success"] is False and body["request_id"].startswith("srv-")
        assert body["error"].startswith("INTERNAL: the server is busy: one job is running and 1 wait behind it, "
                                        "as many as SERVER_QUEUE_SIZE=1 allows"), body
    finally:
        # Hanging up stops a job: the running one at its next frame batch, the waiting one before it starts.
        for client in (waiting, running):
            if client is not None:
                client.kill()
                client.wait(timeout=10)
    server.wait_for_health(lambda health: not health["busy"] and health["queued"] == 0, "the queue to empty")
    log = server.log()
    # stopped wherever it was when the client hung up (on a busy machine, perhaps before its first
    # frame): neither long job rendered all its 3000 frames
    assert "(the client closed the connection); its files are removed" in log, log[-3000:]
    assert " 3000 frames" not in log
    assert not [path for path in server.leftovers() if "talking-head-job-" in str(path)]


def _post_form(server: ServerProcess, files: dict, data: dict | None = None) -> requests.Response:
    return requests.post(f"{server.url}/generate", files=files, data=data or {}, timeout=60)


def test_bad_inputs_get_the_contracts_code_and_a_4xx(server, tmp_path):
    speech, portrait = SPEECH, PORTRAIT
    too_long = b"\0" * (MAX_INPUT_BYTES + 1)
    json_type, text_type = {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}
    cases = [
        (_post_form(server, {"audio_file": speech}), 400,
         "INVALID_INPUT: no image given: send exactly one of image_file"),
        (_post_form(server, {"audio_file": speech, "image_file": b"not a picture"}), 415,
         "UNSUPPORTED_MEDIA: image_file"),
        (_post_form(server, {"audio_file": speech, "image_file": portrait}, {"seed": "seven"}), 400,
         "INVALID_INPUT: seed must be a whole number from 0 to"),
        (_post_form(server, {"audio_file": speech, "image_file": portrait}, {"mode": "fast"}), 400,
         "INVALID_INPUT: mode must be one of quality on this endpoint (lite), not 'fast'."),
        (_post_form(server, {"audio_file": too_long, "image_file": portrait}), 413, "TOO_LARGE: audio_file"),
        (_post_form(server, {"audio_file": speech, "image_file": portrait, "video": b"x"}), 400,
         "INVALID_INPUT: the form field video is a file"),
        # a dubbing backend's file field is taken as a file, then refused by name before it is decoded
        (_post_form(server, {"audio_file": speech, "video_file": b"not a video"}), 400,
         "INVALID_INPUT: video_file is a video to dub, and this endpoint's backend (lite) takes no video"),
        (requests.post(f"{server.url}/generate", data=b"{not json", headers=json_type, timeout=30), 400,
         "INVALID_INPUT: the request body is not valid JSON"),
        (requests.post(f"{server.url}/generate", data=b"hello", headers=text_type, timeout=30), 415,
         "INVALID_INPUT: Content-Type 'text/plain' is not accepted"),
        (requests.get(f"{server.url}/download/no-such-video", timeout=30), 404,
         "INVALID_INPUT: there is no video at this download_url"),
    ]
    for response, status, error in cases:
        assert response.status_code == status, (status, response.text)
        assert response.json()["success"] is False
        assert response.json()["error"].startswith(error), (error, response.text)
    # A body past the limit is refused from its Content-Length, before it is read.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/generate")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(10**10))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413
    assert json.loads(answer.read())["error"].startswith("TOO_LARGE: the request body is larger than")
    connection.close()
    assert server.health()["status"] == "ok"


def test_a_download_past_its_retention_is_404_and_its_file_is_gone(server, tmp_path):
    reply = _post_form(server, SAMPLE_FILES, {"resolution": "128*128"})
    answered = time.monotonic()
    assert reply.status_code == 200, reply.text
    reply = reply.json()
    _download(reply, tmp_path)
    video = next(path for path in server.leftovers() if path.suffix == ".mp4" and path.stem in reply["download_url"])
    time.sleep(max(0.0, answered + RETENTION_SECONDS + 0.2 - time.monotonic()))
    gone = requests.get(reply["download_url"], timeout=30)
    assert gone.status_code == 404, gone.headers
    assert "SERVER_DOWNLOAD_RETENTION_SECONDS" in gone.json()["error"]
    deadline = time.monotonic() + RETENTION_SECONDS
    while video.exists():
        assert time.monotonic() < deadline, "the expired video was not removed"
        time.sleep(0.1)


def test_a_model_that_cannot_load_is_a_503(tmp_path):
    server = ServerProcess({"MODEL_BACKEND": "no-such-backend"}, tmp_path)
    try:
        health = requests.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert health.json()["error"].startswith("MODEL_UNAVAILABLE: MODEL_BACKEND='no-such-backend' is unknown")
        assert requests.get(f"{server.url}/ping", timeout=10).status_code == 503  # unhealthy: out of the pool
        reply = _post_form(server, SAMPLE_FILES)
        assert reply.status_code == 503 and reply.json()["error"].startswith("MODEL_UNAVAILABLE:")
    finally:
        server.stop()


def test_a_job_past_its_deadline_is_stopped(tmp_path, long_speech):
    server = ServerProcess({"MODEL_BACKEND": "lite", "SERVER_JOB_TIMEOUT_SECONDS": "0.5"}, tmp_path)
    try:
        files = {"audio_file": long_speech.read_bytes(), "image_file": PORTRAIT}
        reply = requests.post(f"{server.url}/generate", files=files, timeout=120)
        assert reply.status_code == 500, reply.text
        assert reply.json()["error"] == ("INTERNAL: the job was stopped before it finished: it ran longer than "
                                         "SERVER_JOB_TIMEOUT_SECONDS=0.5 s. Submit it again.")
        assert server.health()["busy"] is False
    finally:
        server.stop()
    assert server.leftovers() == []


@pytest.mark.parametrize("name, value, problem", [
    ("SERVER_QUEUE_SIZE", "101", "must be between 0 and 100"),
    ("SERVER_QUEUE_SIZE", "many", "is not a whole number"),
    ("SERVER_DOWNLOAD_RETENTION_SECONDS", "0", "must be at least 1"),
    ("SERVER_JOB_TIMEOUT_SECONDS", "inf", "must be a positive, finite number"),
])
def test_server_settings_that_cannot_work_are_refused_naming_the_variable(name, value, problem):
    from handler.settings import SettingsError, WorkerSettings

    with pytest.raises(SettingsError, match=rf"^{name}='{value}' {problem}\.$"):
        WorkerSettings.from_env({name: value})


@contextlib.contextmanager
def _held_server(
    workdir: Path, extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[str, Path, subprocess.Popen]]:
    """A lite server whose model load waits for the gate file; yields its URL once /ping answers."""
    gate, port = workdir / "load-now", free_port()
    env = {**os.environ, "MODEL_BACKEND": "lite", "PYTHONPATH": str(ROOT), "TMPDIR": str(workdir), **(extra_env or {})}
    with open(workdir / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", HELD_SERVER, str(gate), "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (workdir / "server.log").read_text()
            with contextlib.suppress(requests.ConnectionError):
                requests.get(f"{url}/ping", timeout=5)
                break
            assert time.monotonic() < deadline, "the server did not listen within 120 s"
            time.sleep(0.1)
        yield url, gate, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_ping_is_204_while_the_model_loads_then_200_and_a_stop_ends_the_running_job_leaving_no_files_or_secrets(
    tmp_path, long_speech,
):
    """One server for its whole life: loading (RunPod's load balancer reads /ping), loaded, then stopped
    mid-job."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    client = None
    with _held_server(tmp_path, {"TMPDIR": str(tmpdir)}) as (url, gate, process):
        assert requests.get(f"{url}/ping", timeout=10).status_code == 204
        health = requests.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "starting"
        early = requests.post(f"{url}/generate", files=SAMPLE_FILES, timeout=60)
        assert early.status_code == 503 and early.headers["Retry-After"].isdigit()
        assert early.json()["error"].startswith("MODEL_UNAVAILABLE: the server is starting")
        assert requests.get(f"{url}/ping", timeout=10).status_code == 204, "still loading: the gate is closed"

        gate.touch()
        deadline = time.monotonic() + 120
        while (status := requests.get(f"{url}/ping", timeout=10).status_code) == 204:
            assert time.monotonic() < deadline, "the model did not load within 120 s"
            time.sleep(0.1)
        assert status == 200
        health = requests.get(f"{url}/health", timeout=10)
        assert health.status_code == 200 and health.json()["backend"] == "lite"
        reply = requests.post(f"{url}/generate", files=SAMPLE_FILES, data={"resolution": "128*128"}, timeout=60)
        assert reply.status_code == 200 and reply.json()["success"] is True
        kept = reply.json()
        assert requests.get(kept["download_url"], timeout=30).status_code == 200

        # the stop: a job running, a video kept
        try:
            client = _start_client(url, long_speech)
            deadline = time.monotonic() + 60
            while not requests.get(f"{url}/health", timeout=10).json()["busy"]:
                assert time.monotonic() < deadline and client.poll() is None, "the long job did not start"
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            # a server that outlived its stop grace would have been killed (-SIGKILL): it stopped by itself
            assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
            output = client.communicate(timeout=30)[0]
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait()
    status_line, body = output.split("\n", 1)
    assert status_line == "500", output
    assert json.loads(body)["error"] == (
        "INTERNAL: the job was stopped before it finished: the worker received SIGTERM and is shutting down. "
        "Submit it again."
    )
    assert sorted(tmpdir.rglob("*")) == []
    log = (tmp_path / "server.log").read_text(errors="replace")
    download_id = kept["download_url"].rsplit("/", 1)[1]
    assert download_id not in log and "/download/" not in log
    assert "Application shutdown complete" in log and "Finished server process" in log
