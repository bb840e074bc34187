"""Hostile conditions around a job's files and names: an S3 store that stores and answers late, a
full temporary disk, the always-on server's kept downloads under their cap, and a name lookup that
never ends. Real servers on 127.0.0.1 (the always-on server, fake S3 stores); each bound is
asserted, and the next job still works."""

from __future__ import annotations

import base64
import errno
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, S3_ACCESS_KEY
from tests.hostile_servers import drip_server
from tests.test_server import PORTRAIT, SAMPLE_FILES, ServerProcess

UPLOAD_TIMEOUT_SECONDS = 4
SECRET = "a-disk-test-secret-never-logged"
SCRATCH_RESERVE_BYTES = 1024 * 1024
# The test seam: the server's free-space probe and its speech decoding, steered by files the test writes.
SEAM = """
import errno, os
from pathlib import Path

import handler.media as media
import handler.scratch as scratch

SEAM = Path(os.environ["DISK_SEAM_DIR"])
real_free_bytes, real_decode_audio = scratch.free_bytes, media.decode_audio


def free_bytes(folder):
    told = SEAM / "free-bytes"
    return int(told.read_text()) if told.exists() else real_free_bytes(folder)


def decode_audio(data, field, workdir, max_seconds):
    if (SEAM / "enospc").exists():
        (workdir / "speech-input").write_bytes(data[: len(data) // 2])  # what a disk that filled up keeps
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(workdir / "speech-input"))
    return real_decode_audio(data, field, workdir, max_seconds)


scratch.free_bytes, media.decode_audio = free_bytes, decode_audio
"""


class SeamServer(ServerProcess):
    """The always-on server with SEAM loaded first (sitecustomize), steered through `seam_dir`."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.seam_dir = workdir / "seam"
        site = workdir / "site"
        for folder in (self.seam_dir, site):
            folder.mkdir(parents=True)
        (site / "sitecustomize.py").write_text(SEAM)
        super().__init__({**env, "DISK_SEAM_DIR": str(self.seam_dir)}, workdir, python_path=(str(site),))

    def job_folders(self) -> list[Path]:
        return sorted(self.tmpdir.glob("talking-head-job-*"))

    def kept_videos(self) -> list[Path]:
        return sorted(self.tmpdir.glob("talking-head-downloads-*/*.mp4"))


# Two of this module's 128x128 sample videos (about 94 kB each), not three; checked by the cap's test.
CAP_BYTES = 250_000


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[SeamServer]:
    process = SeamServer({
        "MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1", "UPLOAD_TIMEOUT_SECONDS": str(UPLOAD_TIMEOUT_SECONDS),
        "SERVER_DOWNLOAD_MAX_BYTES": str(CAP_BYTES), "SCRATCH_RESERVE_BYTES": str(SCRATCH_RESERVE_BYTES),
    }, tmp_path_factory.mktemp("disk-server"))
    yield process
    process.stop()
    assert process.leftovers() == []
    assert SECRET not in process.log()


def _generate(server: SeamServer, **fields: str) -> requests.Response:
    return requests.post(f"{server.url}/generate", files=SAMPLE_FILES, data={"resolution": "128*128", **fields},
                         timeout=120)


def _assert_next_job_works(server: SeamServer) -> None:
    reply = _generate(server)
    assert reply.status_code == 200, reply.text
    assert requests.get(reply.json()["download_url"], timeout=30).status_code == 200
    assert server.job_folders() == []


# --- the temporary disk ------------------------------------------------------------------------


def test_a_full_disk_refuses_the_job_before_its_inputs_and_the_next_job_runs(server):
    free = 50_000_000  # less than a job of MAX_AUDIO_SECONDS (300 s) may write, more than one of 20 s
    (server.seam_dir / "free-bytes").write_text(str(free))
    try:
        with drip_server(b"x" * 600, 0.1) as media:
            job = {"input": {"audio_url": media.url, "image_file": base64.b64encode(PORTRAIT).decode()}}
            reply = requests.post(f"{server.url}/generate", json=job, timeout=120)
            assert media.connections == [], "the check comes before any input is fetched"
        assert reply.status_code == 413, reply.text
        error = reply.json()["error"]
        assert error.startswith(f"TOO_LARGE: the worker's temporary folder {server.tmpdir} has 50.0 MB free, "
                                "and this job may need "), error
        for fix in (f"SCRATCH_RESERVE_BYTES={SCRATCH_RESERVE_BYTES}", "max_duration_seconds", "TMPDIR"):
            assert fix in error, error
        assert server.job_folders() == []
        # the need is the job's own: shorter speech fits the same disk
        short = _generate(server, max_duration_seconds="20")
        assert short.status_code == 200, short.text
    finally:
        (server.seam_dir / "free-bytes").unlink()
    _assert_next_job_works(server)


def test_a_disk_that_fills_up_during_the_job_is_too_large_not_internal(server):
    (server.seam_dir / "enospc").write_text("")
    try:
        reply = _generate(server)
    finally:
        (server.seam_dir / "enospc").unlink()
    assert reply.status_code == 413, reply.text
    error = reply.json()["error"]
    assert error.startswith(f"TOO_LARGE: the disk of the worker's temporary folder {server.tmpdir} filled up "
                            "during the job (no space left on device)"), error
    assert "SCRATCH_RESERVE_BYTES" in error and "TMPDIR" in error
    assert server.job_folders() == [], "the partial files went with the job's folder"
    assert "crashed" not in server.log()
    _assert_next_job_works(server)


def test_the_space_check_counts_inputs_output_and_segments():
    from handler.schema import parse_job
    from handler.scratch import MUX_WAV_BYTES_PER_SECOND, OUTPUT_BYTES_PER_SECOND, job_scratch_bytes

    audio = base64.b64encode(b"\0" * 3000).decode()
    job = {"input": {"audio_file": audio, "image_file": "eA==", "max_duration_seconds": 10}}
    request = parse_job(job, max_audio_seconds=300)
    assert job_scratch_bytes(request, 1 << 20) == 3000 + 10 * (MUX_WAV_BYTES_PER_SECOND + OUTPUT_BYTES_PER_SECOND)
    by_url = parse_job({"input": {"audio_url": "https://example.invalid/a.wav", "image_file": "eA==",
                                  "max_duration_seconds": 10, "stream": True}}, max_audio_seconds=300)
    assert job_scratch_bytes(by_url, 1 << 20) == (1 << 20) + 10 * (MUX_WAV_BYTES_PER_SECOND
                                                                   + 2 * OUTPUT_BYTES_PER_SECOND)


# --- kept downloads under SERVER_DOWNLOAD_MAX_BYTES ---------------------------------------------


def test_kept_downloads_stay_under_the_cap_oldest_removed_first(server):
    urls, sizes = [], []
    for _ in range(4):
        reply = _generate(server)
        assert reply.status_code == 200, reply.text
        urls.append(reply.json()["download_url"])
        sizes.append(reply.json()["file_size_bytes"])
        kept = server.kept_videos()
        assert sum(path.stat().st_size for path in kept) <= CAP_BYTES, (kept, CAP_BYTES)
    print(f"video sizes {sizes}, cap {CAP_BYTES}: {len(server.kept_videos())} kept")
    assert 2 * max(sizes) <= CAP_BYTES < 3 * min(sizes), "the cap is meant to hold two videos of this job"
    statuses = [requests.get(url, timeout=30).status_code for url in urls]
    assert statuses == [404, 404, 200, 200], statuses


def _longer_speech(times: int) -> bytes:
    import io

    import numpy as np
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(SAMPLE_FILES["audio_file"]), dtype="int16")
    out = io.BytesIO()
    soundfile.write(out, np.concatenate([samples] * times), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def test_a_video_larger_than_the_whole_cap_fails_clearly_and_the_next_job_runs(server):
    # 31 s of speech at this module's 128x128: about 4 of its 94 kB sample videos, past the cap's 2.5
    files = {"audio_file": _longer_speech(4), "image_file": PORTRAIT}
    reply = requests.post(f"{server.url}/generate", files=files, data={"resolution": "128*128"}, timeout=120)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error.startswith("OUTPUT_TOO_LARGE: the video is "), error
    assert f"more than this server keeps for downloads (SERVER_DOWNLOAD_MAX_BYTES={CAP_BYTES})" in error
    assert "raise SERVER_DOWNLOAD_MAX_BYTES" in error
    assert sum(path.stat().st_size for path in server.kept_videos()) <= CAP_BYTES
    _assert_next_job_works(server)


# --- an S3 store that stores the object and answers late -----------------------------------------


class _LateStore(http.server.BaseHTTPRequestHandler):
    """An S3 store on 127.0.0.1 that keeps each PUT's body, then answers it after `answer_after`
    seconds (or drops the connection without answering: `drop`); `keep` False forgets the body.
    HEAD answers as S3 does: the size and the MD5 ETag of what it holds, or 404."""

    #: the bucket's endpoint, with the bucket in its path
    endpoint = ""
    answer_after = 0.0
    drop = False
    keep = True
    objects: dict[str, bytes] = {}
    puts: list[str] = []
    heads: list[str] = []
    stopping = threading.Event()

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.path.split("?", 1)[0]
        type(self).puts.append(key)
        if self.keep:
            self.objects[key] = body
        if self.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.stopping.wait(self.answer_after):
            return
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        key = self.path.split("?", 1)[0]
        type(self).heads.append(key)
        body = self.objects.get(key)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def late_store() -> Iterator[type[_LateStore]]:
    _LateStore.answer_after, _LateStore.drop, _LateStore.keep = 60.0, False, True
    _LateStore.objects, _LateStore.puts, _LateStore.heads = {}, [], []
    _LateStore.stopping = threading.Event()
    store = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LateStore)
    store.daemon_threads = True
    thread = threading.Thread(target=store.serve_forever, daemon=True)
    thread.start()
    _LateStore.endpoint = f"http://127.0.0.1:{store.server_address[1]}/late-bucket"
    yield _LateStore
    _LateStore.stopping.set()
    store.shutdown()
    store.server_close()


def _upload(video: Path, timeout_seconds: float) -> tuple[dict, float]:
    from handler.bucket import JOB_FIELDS, make_bucket
    from handler.delivery import upload_result

    bucket = make_bucket(_LateStore.endpoint, None, S3_ACCESS_KEY, SECRET, JOB_FIELDS)
    started = time.monotonic()
    result = upload_result(video, "job-late", bucket, 600, timeout_seconds=timeout_seconds, allow_private=True)
    return result, time.monotonic() - started


def test_a_store_that_stores_and_answers_late_gets_the_object_once_and_the_job_succeeds(server, late_store):
    job = {"input": {"audio_file": base64.b64encode(SAMPLE_FILES["audio_file"]).decode(),
                     "image_file": base64.b64encode(PORTRAIT).decode(), "resolution": "128*128",
                     "output_type": "s3"},
           "s3Config": {"accessId": S3_ACCESS_KEY, "accessSecret": SECRET, "bucketName": "late-bucket",
                        "endpointUrl": late_store.endpoint.rsplit("/", 1)[0]}}
    reply = requests.post(f"{server.url}/generate", json=job, timeout=120)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    key = f"/late-bucket/{result['video_s3_key']}"
    assert late_store.puts == [key], "sent once: the HEAD found it, no second PUT"
    assert key in late_store.heads
    assert len(late_store.objects[key]) == result["file_size_bytes"]
    assert "the store holds the object" in server.log()
    _assert_next_job_works(server)


def test_a_dropped_answer_is_checked_before_a_retry_and_not_sent_again(late_store, tmp_path):
    late_store.drop = True
    video = tmp_path / "video.mp4"
    video.write_bytes(os.urandom(300_000))
    result, seconds = _upload(video, timeout_seconds=20)
    key = f"/late-bucket/{result['video_s3_key']}"
    assert late_store.puts == [key] and late_store.heads == [key]
    assert late_store.objects[key] == video.read_bytes()
    assert seconds < 20, "ended by the HEAD, not the deadline"


def test_a_store_that_lost_the_object_is_sent_it_again_within_the_deadline(late_store, tmp_path):
    late_store.drop, late_store.keep = True, False  # drops the connection and keeps nothing
    video = tmp_path / "video.mp4"
    video.write_bytes(os.urandom(300_000))
    from handler.errors import JobError

    with pytest.raises(JobError) as failure:
        _upload(video, timeout_seconds=3)
    assert str(failure.value).startswith("UPLOAD_FAILED: the video could not be uploaded: the connection to "
                                         "127.0.0.1 broke off"), failure.value
    assert len(late_store.puts) >= 2, "the HEAD said no: the object was sent again"
    assert len(late_store.heads) == len(late_store.puts), "each retry was preceded by its check"


def test_a_late_answer_with_the_object_missing_fails_at_the_deadline_naming_it(late_store, tmp_path):
    late_store.keep = False
    video = tmp_path / "video.mp4"
    video.write_bytes(os.urandom(100_000))
    from handler.errors import JobError

    started = time.monotonic()
    with pytest.raises(JobError) as failure:
        _upload(video, timeout_seconds=2)
    seconds = time.monotonic() - started
    assert str(failure.value) == (
        "UPLOAD_FAILED: the video could not be uploaded: 127.0.0.1 did not answer within the upload deadline (2 s, "
        "UPLOAD_TIMEOUT_SECONDS); check s3Config.endpointUrl, or raise the deadline for very large videos.")
    assert len(late_store.puts) == 1 and len(late_store.heads) == 1
    assert 1.9 <= seconds < 4, "the late answer was waited for until the deadline, not past it"


# --- the name lookup ---------------------------------------------------------------------------


@pytest.fixture
def blocked_dns(monkeypatch) -> Iterator[threading.Event]:
    """getaddrinfo blocks until the event is set (then answers a private address)."""
    release = threading.Event()

    def blocking_getaddrinfo(host, port, *args, **kwargs):
        release.wait(60)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    monkeypatch.setattr(socket, "getaddrinfo", blocking_getaddrinfo)
    yield release
    release.set()


def _lookup_threads() -> int:
    return sum(thread.name == "lookup" for thread in threading.enumerate())


def test_a_lookup_that_never_ends_is_cut_at_fetch_timeout(blocked_dns):
    from handler import fetch
    from handler.errors import JobError

    started = time.monotonic()
    with pytest.raises(JobError) as failure:
        fetch.fetch_url("https://media.example.invalid/speech.wav", "audio_url", 1 << 20, 1.0, allow_private=False)
    seconds = time.monotonic() - started
    assert str(failure.value) == (
        "FETCH_FAILED: audio_url: looking up the host 'media.example.invalid' took longer than the "
        "FETCH_TIMEOUT_SECONDS=1 s; check the URL, or retry when the name service answers.")
    assert 0.9 <= seconds < 2.0, seconds  # the deadline, with itself as the slack


def test_a_stop_ends_a_blocked_lookup_at_once(blocked_dns):
    from handler import fetch
    from handler.cancel import JobCancelled, JobControl

    control = JobControl()
    threading.Timer(0.3, control.stop, ("the worker received SIGTERM",)).start()
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        fetch.fetch_url("https://media.example.invalid/a.wav", "audio_url", 1 << 20, 600.0, allow_private=False,
                        control=control)
    assert time.monotonic() - started < 60, "the stop, not the 600 s deadline nor the resolver, ended it"


def test_blocked_lookups_are_bounded_and_the_guard_still_refuses_private_answers(blocked_dns, monkeypatch):
    import urllib3.connection

    from handler import fetch
    from handler.errors import JobError

    connected: list[str] = []
    monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect",
                        lambda self, *a, **k: connected.append(self.host))
    before = _lookup_threads()
    for _ in range(fetch.MAX_LOOKUPS + 3):
        with pytest.raises(JobError, match="took longer than"):
            fetch.resolve_public("stuck.example.invalid", 443, "audio_url", False, fetch.ErrorCode.FETCH_FAILED,
                                 "refused.", deadline=time.monotonic() + 0.2)
    assert _lookup_threads() - before <= fetch.MAX_LOOKUPS, "blocked lookups hold at most MAX_LOOKUPS threads"
    blocked_dns.set()  # the resolver answers now: a private address, refused without connecting
    deadline = time.monotonic() + 30
    while _lookup_threads() > before:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(JobError) as refused:
        fetch.fetch_url("https://media.example.invalid/a.wav", "audio_url", 1 << 20, 5.0, allow_private=False)
    assert "points to a non-public address (10.0.0.7)" in str(refused.value)
    assert connected == []


# --- the scratch folder itself -----------------------------------------------------------------


def test_a_full_disk_while_making_the_scratch_folder_is_too_large(monkeypatch, tmp_path):
    import tempfile

    from handler.errors import ErrorCode, JobError
    from handler.scratch import scratch_folder

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    with pytest.raises(JobError) as failure, scratch_folder(parent=tmp_path):
        pass
    assert failure.value.code is ErrorCode.TOO_LARGE and str(tmp_path) in failure.value.message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("raised", [
    OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
    RuntimeError(f"ffmpeg exited with 1: [out#0/mp4] Error writing trailer: {os.strerror(errno.ENOSPC)}"),
])
def test_a_full_disk_seen_by_a_write_or_by_ffmpeg_is_too_large(raised, tmp_path):
    from handler.errors import ErrorCode, JobError
    from handler.scratch import scratch_folder

    with pytest.raises(JobError) as failure, scratch_folder(parent=tmp_path) as folder:
        (folder / "video.mp4").write_bytes(b"part of a video")
        raise raised
    assert failure.value.code is ErrorCode.TOO_LARGE
    assert failure.value.message.startswith(f"the disk of the worker's temporary folder {tmp_path} filled up")
    assert list(tmp_path.iterdir()) == []


def test_a_job_error_quoting_the_words_is_left_as_it_is(tmp_path):
    from handler.errors import ErrorCode, JobError
    from handler.scratch import scratch_folder

    quoted = JobError(ErrorCode.INVALID_INPUT, f"avatar_id {os.strerror(errno.ENOSPC)!r} is not a preset.")
    with pytest.raises(JobError) as failure, scratch_folder(parent=tmp_path):
        raise quoted
    assert failure.value is quoted


# --- the soak benchmark, in miniature so that it cannot rot ---------------------------------------


@pytest.mark.slow
def test_the_soak_benchmark_runs_every_kind_of_job_once():
    from scripts.benchmark_soak import BOMBS

    kinds = 6 + len(BOMBS)  # two good ones, four hostile ones, the bombs
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_soak.py"), "--jobs", str(kinds),
                           "--every", "3", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["unexpected"] == 0
    assert [report["jobs"] for report in summary["reports"]] == list(range(3, kinds + 1, 3))
    assert all(report["scratch_files"] == 0 for report in summary["reports"])
    assert "after the server stopped: 0 files or folders left in its TMPDIR" in done.stdout
