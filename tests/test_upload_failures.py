"""Uploads that cannot succeed fail within UPLOAD_TIMEOUT_SECONDS, saying why, and the worker goes on.

The jobs carry their own bucket (RunPod's `s3Config`, beside `input`), so they go through the SDK's
job loop from a RunPod queue on 127.0.0.1 (tests/runpod_platform.py), which keeps `s3Config`
(the SDK's local test API drops it). The buckets are real servers on 127.0.0.1: one that accepts
connections and never answers, one that answers 503, one that refuses the keys, moto (a missing
bucket), a plain web server, and a closed port.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from handler.sample import sample_job_input
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, free_port
from tests.runpod_platform import QueueWorker, RunPodPlatform

UPLOAD_TIMEOUT_SECONDS = 3
SECRET = "a-job-secret-that-must-not-leak"


def attempts_that_fit(timeout_seconds: float) -> int:
    """The most attempts the retry schedule allows within the deadline, were every attempt instant.

    Counting attempts, not seconds, shows that retries respect the deadline on a machine of any speed.
    """
    from handler.delivery import FIRST_RETRY_PAUSE_SECONDS, MAX_RETRY_PAUSE_SECONDS, MIN_ATTEMPT_SECONDS

    attempts, started_at = 1, 0.0
    while True:
        pause = min(FIRST_RETRY_PAUSE_SECONDS * 2 ** (attempts - 1), MAX_RETRY_PAUSE_SECONDS)
        if started_at + pause + MIN_ATTEMPT_SECONDS >= timeout_seconds:
            return attempts
        attempts, started_at = attempts + 1, started_at + pause


def assert_ended_by_the_deadline(seconds: float, timeout_seconds: float) -> None:
    """Not before the deadline, and long before a deadline that did not hold would end it (never:
    these servers never finish answering). The deadline itself is the slack past it that a busy
    machine gets, so no load on a working upload reaches the bound."""
    assert timeout_seconds - 0.1 <= seconds < 2 * timeout_seconds, seconds


@pytest.fixture(scope="module")
def platform() -> Iterator[RunPodPlatform]:
    platform = RunPodPlatform()
    yield platform
    platform.close()


@pytest.fixture(scope="module")
def worker(platform, tmp_path_factory) -> Iterator[QueueWorker]:
    env = {"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1", "UPLOAD_TIMEOUT_SECONDS": str(UPLOAD_TIMEOUT_SECONDS)}
    worker = QueueWorker(platform, env, tmp_path_factory.mktemp("upload-worker"))
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def hanging_endpoint() -> Iterator[str]:
    """Accepts every connection and never reads or answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with contextlib.suppress(socket.timeout, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    done.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


class _Unavailable(http.server.BaseHTTPRequestHandler):
    requests = 0

    def do_PUT(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<Error><Code>ServiceUnavailable</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def unavailable_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _Refusing(_Unavailable):
    """Answers as S3 does to keys it does not know. (moto cannot: its access checks read only the
    Authorization header, and the worker signs its PUT in the query string, as a presigned URL.)"""

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = (b"<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not "
                b"exist in our records.</Message></Error>")
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def refusing_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _s3_config(
    endpoint: str, bucket: str = "talking-head-test", key_id: str = S3_ACCESS_KEY, secret: str = SECRET
) -> dict:
    return {"accessId": key_id, "accessSecret": secret, "bucketName": bucket, "endpointUrl": endpoint}


def _run(platform: RunPodPlatform, s3_config: dict) -> tuple[str, dict, float]:
    job_id = platform.submit(sample_job_input(resolution="128*128", output_type="s3"), s3Config=s3_config)
    started = time.monotonic()
    result = platform.wait_for(lambda: platform.results.get(job_id), 60, "the job's result")
    return job_id, result, time.monotonic() - started


def _upload_seconds(worker: QueueWorker, bucket: str) -> tuple[float, int]:
    """The worker's own figure: how long the failed upload took, in how many attempts."""
    match = re.findall(rf"upload to bucket {bucket} failed after ([\d.]+) s and (\d+) attempt", worker.log())
    assert match, worker.log()[-2000:]
    return float(match[-1][0]), int(match[-1][1])


def _assert_upload_failed(result: dict, *phrases: str) -> None:
    error = result.get("error", "")
    assert error.startswith("UPLOAD_FAILED: the video could not be uploaded: "), result
    for phrase in phrases:
        assert phrase in error, error
    assert SECRET not in error and "Error" not in error.split(":", 1)[1], error


def test_a_bucket_that_never_answers_costs_the_deadline_and_the_worker_goes_on(platform, worker, hanging_endpoint):
    _, result, seconds = _run(platform, _s3_config(hanging_endpoint, bucket="silent"))
    upload_seconds, attempts = _upload_seconds(worker, "silent")
    print(f"hanging bucket: upload failed after {upload_seconds:.2f} s ({attempts} attempt(s)); "
          f"job failed {seconds:.2f} s after it was queued")
    _assert_upload_failed(result, "127.0.0.1 did not answer within the upload deadline (3 s, UPLOAD_TIMEOUT_SECONDS)",
                          "s3Config.endpointUrl")
    assert attempts == 1, "an attempt the deadline cut is not retried"
    assert_ended_by_the_deadline(upload_seconds, UPLOAD_TIMEOUT_SECONDS)

    good_id = platform.submit(sample_job_input(resolution="128*128", output_type="base64"))
    good = platform.wait_for(lambda: platform.results.get(good_id), 60, "the next job's result")
    assert good.get("output", {}).get("success") is True, good
    assert worker.leftovers() == []


def test_a_bucket_answering_503_is_retried_within_the_deadline(platform, worker, unavailable_endpoint):
    _Unavailable.requests = 0
    _, result, _ = _run(platform, _s3_config(unavailable_endpoint, bucket="busy"))
    upload_seconds, attempts = _upload_seconds(worker, "busy")
    print(f"503 bucket: upload failed after {upload_seconds:.2f} s and {attempts} attempts")
    _assert_upload_failed(result, "127.0.0.1 kept answering HTTP 503 (ServiceUnavailable)")
    assert 2 <= attempts == _Unavailable.requests <= attempts_that_fit(UPLOAD_TIMEOUT_SECONDS)
    assert upload_seconds < 2 * UPLOAD_TIMEOUT_SECONDS  # the deadline as slack; the count above is the check


def test_a_missing_bucket_is_named(platform, worker, s3_server):
    _, result, _ = _run(platform, _s3_config(s3_server, bucket="no-such-bucket"))
    _assert_upload_failed(result, "there is no bucket 'no-such-bucket' at 127.0.0.1", "check s3Config.bucketName")
    assert _upload_seconds(worker, "no-such-bucket")[1] == 1, "a missing bucket is not retried"


def test_refused_keys_are_access_denied(platform, worker, refusing_endpoint):
    _, result, _ = _run(platform, _s3_config(refusing_endpoint, bucket="locked", key_id="AKIAUNKNOWNKEY000000"))
    _assert_upload_failed(result, "access to bucket 'locked' at 127.0.0.1 was denied (HTTP 403 (InvalidAccessKeyId))",
                          "check s3Config.accessId and s3Config.accessSecret")


def test_an_endpoint_that_is_not_s3(platform, worker, media_server):
    base, _ = media_server
    _, result, _ = _run(platform, _s3_config(base, bucket="web"))
    _assert_upload_failed(result, "127.0.0.1 answered HTTP 501", "check that s3Config.endpointUrl is an S3 endpoint")


def test_an_endpoint_nobody_listens_on(platform, worker):
    _, result, _ = _run(platform, _s3_config(f"http://127.0.0.1:{free_port()}", bucket="closed"))
    upload_seconds, attempts = _upload_seconds(worker, "closed")
    print(f"closed port: upload failed after {upload_seconds:.2f} s and {attempts} attempts")
    _assert_upload_failed(result, "could not connect to 127.0.0.1; check s3Config.endpointUrl")
    assert 2 <= attempts <= attempts_that_fit(UPLOAD_TIMEOUT_SECONDS), "a refused connection is retried in time"
    assert upload_seconds < 2 * UPLOAD_TIMEOUT_SECONDS  # the deadline as slack; the count above is the check
    assert SECRET not in worker.log() and S3_SECRET_KEY not in worker.log()


@pytest.fixture
def trickling_endpoint() -> Iterator[str]:
    """Reads the request, then answers a header one byte every 0.3 s, forever: no single wait is long."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    done = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            connection.settimeout(5)
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in connection.recv(65536):
                    pass
                connection.setblocking(False)
                connection.send(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not done.wait(0.3):
                    with contextlib.suppress(BlockingIOError):
                        connection.recv(1 << 20)  # the body, as it comes
                    connection.send(b"a")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    done.set()
    thread.join(timeout=5)
    server.close()


def test_a_bucket_that_answers_a_byte_at_a_time_still_ends_by_the_deadline(trickling_endpoint, tmp_path):
    """Every socket wait is short, so only the upload's own deadline ends it."""
    from handler.bucket import JOB_FIELDS, make_bucket
    from handler.delivery import upload_result
    from handler.errors import JobError

    video = tmp_path / "video.mp4"
    video.write_bytes(b"\0" * 200_000)
    bucket = make_bucket(trickling_endpoint, "slow", S3_ACCESS_KEY, SECRET, JOB_FIELDS)
    started = time.monotonic()
    with pytest.raises(JobError) as failure:
        upload_result(video, "job-slow", bucket, 600, timeout_seconds=2, allow_private=True)
    seconds = time.monotonic() - started
    print(f"trickling bucket: upload failed after {seconds:.2f} s")
    assert str(failure.value).startswith("UPLOAD_FAILED: the video could not be uploaded: 127.0.0.1 did not answer "
                                         "within the upload deadline (2 s"), failure.value
    assert_ended_by_the_deadline(seconds, 2)


class _SlowStore(http.server.BaseHTTPRequestHandler):
    """Reads the whole PUT, then answers 200 after `answer_after` seconds: a store checking a large object."""

    answer_after = 0.0
    puts = 0
    stopping = threading.Event()

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).puts += 1
        if self.stopping.wait(self.answer_after):
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_store() -> Iterator[str]:
    _SlowStore.puts, _SlowStore.stopping = 0, threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowStore)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _SlowStore.stopping.set()
    server.shutdown()
    server.server_close()


def test_the_wait_for_the_answer_is_what_is_left_of_the_upload_deadline(slow_store, tmp_path):
    """A store that answers after the connect timeout, within the deadline, gets the object once."""
    from handler.bucket import JOB_FIELDS, make_bucket
    from handler.delivery import MAX_CONNECT_SECONDS, upload_result

    _SlowStore.answer_after = MAX_CONNECT_SECONDS + 2
    video = tmp_path / "video.mp4"
    video.write_bytes(b"\0" * 200_000)
    bucket = make_bucket(slow_store, "slow", S3_ACCESS_KEY, SECRET, JOB_FIELDS)
    result = upload_result(video, "job-slow", bucket, 600, timeout_seconds=MAX_CONNECT_SECONDS + 10,
                           allow_private=True)
    assert result["video_s3_key"].endswith(".mp4")
    assert _SlowStore.puts == 1, "sent once: the answer was waited for, not retried"


def test_a_store_answering_after_the_deadline_fails_naming_upload_timeout_seconds(slow_store, tmp_path):
    from handler.bucket import JOB_FIELDS, make_bucket
    from handler.delivery import upload_result
    from handler.errors import JobError

    _SlowStore.answer_after = 30
    video = tmp_path / "video.mp4"
    video.write_bytes(b"\0" * 200_000)
    bucket = make_bucket(slow_store, "late", S3_ACCESS_KEY, SECRET, JOB_FIELDS)
    started = time.monotonic()
    with pytest.raises(JobError) as failure:
        upload_result(video, "job-late", bucket, 600, timeout_seconds=2, allow_private=True)
    assert str(failure.value) == (
        "UPLOAD_FAILED: the video could not be uploaded: 127.0.0.1 did not answer within the upload deadline (2 s, "
        "UPLOAD_TIMEOUT_SECONDS); check s3Config.endpointUrl, or raise the deadline for very large videos.")
    assert _SlowStore.puts == 1
    assert_ended_by_the_deadline(time.monotonic() - started, 2)


@pytest.mark.parametrize("store", ["hanging_endpoint", "unavailable_endpoint"])
def test_sigterm_stops_an_upload_and_its_retries_at_once(store, request, tmp_path):
    """With a deadline far away, only the stop can end the upload: the worker exits, its files removed."""
    endpoint = request.getfixturevalue(store)
    _Unavailable.requests = 0
    env = {"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1", "UPLOAD_TIMEOUT_SECONDS": "600"}
    platform = RunPodPlatform()  # its own: the module's worker takes no job of this one
    worker = QueueWorker(platform, env, tmp_path)
    try:
        job_id = platform.submit(sample_job_input(resolution="128*128", output_type="s3"),
                                 s3Config=_s3_config(endpoint, bucket="stopped"))
        platform.wait_for(lambda: any(isinstance(update, dict) and update.get("stage") == "upload"
                                          for update in platform.progress.get(job_id, [])),
                          60, "the upload to start")
        if store == "unavailable_endpoint":
            platform.wait_for(lambda: _Unavailable.requests >= 2, 60, "a retry")
        else:
            time.sleep(0.5)  # the attempt is waiting for its answer
        signalled = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        result = platform.wait_for(lambda: platform.results.get(job_id), 60, "the stopped job's result")
        worker.process.wait(timeout=60)  # far under the 600 s the upload had left
        print(f"{store}: SIGTERM mid-upload -> worker exited after {time.monotonic() - signalled:.2f} s")
        assert result["error"].startswith("INTERNAL: the job was stopped before it finished: the worker received "
                                          "SIGTERM"), result
        requests_at_exit = _Unavailable.requests
        assert "upload to bucket stopped failed" not in worker.log()
        assert worker.leftovers() == []
        time.sleep(1.0)
        assert _Unavailable.requests == requests_at_exit, "no retry after the stop"
    finally:
        worker.stop()
        platform.close()
