"""Hostile clients against the always-on server (`python -m handler.http_server`) on 127.0.0.1: every
request bounded in time, memory and disk, and the next job still works."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import select
import signal
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests.hostile_servers import drip_server
from tests.test_server import PORTRAIT, SAMPLE_FILES, ServerProcess

# A byte each DRIP_SECONDS, DRIP_BYTES in all: a download that is not cut runs 60 s.
DRIP_SECONDS, DRIP_BYTES = 0.1, 600


def _url_job(audio_url: str) -> dict:
    return {"input": {"audio_url": audio_url, "image_file": base64.b64encode(PORTRAIT).decode()}}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """One server for the tests whose settings do not meet (a server process is most of a test's CPU
    time): URLs to 127.0.0.1 fetched within 2 s, and one job waiting at most. Stopped, it leaves
    nothing in its TMPDIR: not the scratch of any of their jobs, refused or done, nor a kept video."""
    process = ServerProcess({"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1", "FETCH_TIMEOUT_SECONDS": "2",
                             "SERVER_QUEUE_SIZE": "1"}, tmp_path_factory.mktemp("server"))
    yield process
    process.stop()
    assert process.leftovers() == []


def test_a_slow_drip_url_is_cut_at_fetch_timeout_and_the_next_job_runs(server):
    with drip_server(b"x" * DRIP_BYTES, DRIP_SECONDS) as drip:
        reply = requests.post(f"{server.url}/generate", json=_url_job(drip.url), timeout=120)
        cut = drip.wait_hung_up(timeout=30)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == ("FETCH_FAILED: audio_url did not finish downloading within "
                                     "FETCH_TIMEOUT_SECONDS=2 s; use a faster host or send the file as base64.")
    assert cut.sent < DRIP_BYTES // 2
    assert server.health()["busy"] is False
    following = requests.post(f"{server.url}/generate", files=SAMPLE_FILES, data={"resolution": "128*128"},
                              timeout=120)
    assert following.status_code == 200, following.text


def test_sigterm_stops_a_slow_download_and_the_server_exits(tmp_path):
    server = ServerProcess({"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1", "FETCH_TIMEOUT_SECONDS": "600"},
                           tmp_path)
    try:
        with drip_server(b"x" * DRIP_BYTES, DRIP_SECONDS) as drip:
            # the request in a thread of its own: its answer is the stop's
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pending = pool.submit(requests.post, f"{server.url}/generate", json=_url_job(drip.url), timeout=120)
                drip.first()
                server.process.send_signal(signal.SIGTERM)
                cut = drip.wait_hung_up(timeout=30)
                reply = pending.result()
        assert cut.sent < DRIP_BYTES // 2, "the stop ended the download, not the drip running out"
        assert reply.status_code == 500, reply.text
        assert "the worker received SIGTERM" in reply.json()["error"]
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    assert server.leftovers() == []


API_KEYS = ("first-key-never-logged", "second-key-never-logged")
KEYED_MAX_INPUT_BYTES = 1024 * 1024
PUBLIC_URL = "https://talk.example.com"


def _bearer(key: str = API_KEYS[0]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The second server, for the tests whose settings meet without getting in each other's way: two API
    keys, a 1 MiB input limit and a public URL. Stopped, its log holds neither key."""
    process = ServerProcess({"MODEL_BACKEND": "lite", "SERVER_API_KEY": ",".join(API_KEYS),
                             "MAX_INPUT_BYTES": str(KEYED_MAX_INPUT_BYTES), "SERVER_PUBLIC_URL": f"{PUBLIC_URL}/"},
                            tmp_path_factory.mktemp("keyed-server"))
    yield process
    process.stop()
    log = process.log()
    assert not any(key in log for key in API_KEYS)


def test_with_server_api_key_only_a_bearer_of_a_key_renders_and_downloads(keyed_server):
    server = keyed_server
    generate = f"{server.url}/generate"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEYS[0]}"},
                    {"Authorization": API_KEYS[0]}):
        refused = requests.post(generate, files=SAMPLE_FILES, headers=headers, timeout=60)
        assert refused.status_code == 401, refused.text
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert refused.json()["error"] == (
            "INVALID_INPUT: this server requires an API key (SERVER_API_KEY): send the header "
            "Authorization: Bearer <key> with one of its keys.")
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/ping", timeout=10).status_code == 200
    reply = requests.post(generate, files=SAMPLE_FILES, data={"resolution": "128*128"},
                          headers=_bearer(API_KEYS[1]), timeout=120)
    assert reply.status_code == 200, reply.text
    # the public base (SERVER_PUBLIC_URL) is not this test's to reach: the same path on the server itself
    path = reply.json()["download_url"].removeprefix(PUBLIC_URL)
    assert path.startswith("/download/")
    assert requests.get(f"{server.url}{path}", timeout=30).status_code == 401
    video = requests.get(f"{server.url}{path}", headers=_bearer(API_KEYS[0]), timeout=30)
    assert video.status_code == 200 and video.headers["Content-Type"] == "video/mp4"
    log = server.log()
    assert not any(key in log for key in API_KEYS)


def test_the_server_refuses_to_listen_beyond_loopback_without_a_key(monkeypatch, capsys):
    import uvicorn

    from handler import http_server

    def never(*args, **kwargs):
        raise AssertionError("the server started listening")

    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.delenv("SERVER_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exited:
        http_server.main(["--host", "0.0.0.0", "--port", "9"])
    assert exited.value.code == 2
    assert ("--host 0.0.0.0 listens beyond this machine, and SERVER_API_KEY is not set"
            in capsys.readouterr().err)
    monkeypatch.setenv("SERVER_API_KEY", API_KEYS[0])
    with pytest.raises(AssertionError, match="started listening"):
        http_server.main(["--host", "0.0.0.0", "--port", "9"])
    monkeypatch.delenv("SERVER_API_KEY")
    with pytest.raises(AssertionError, match="started listening"):
        http_server.main(["--host", "0.0.0.0", "--port", "9", "--no-api-key"])
    with pytest.raises(AssertionError, match="started listening"):
        http_server.main(["--host", "127.0.0.1", "--port", "9"])


IDLE_SOCKETS = 250


def _closed_by_server(sock: socket.socket) -> bool:
    """The server closed `sock` (EOF or reset); False while it is open."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


def test_idle_and_slow_header_sockets_leave_health_answering_and_are_closed_by_the_deadlines(server):
    from handler.http_server import HEADER_TIMEOUT_SECONDS, KEEP_ALIVE_SECONDS, MAX_CONNECTIONS

    sockets: list[socket.socket] = []
    others: list[socket.socket] = []
    try:
        address = ("127.0.0.1", server.port)
        # a keep-alive connection, idle after its answer
        kept = socket.create_connection(address, timeout=10)
        kept.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        for index in range(IDLE_SOCKETS):
            sock = socket.create_connection(address, timeout=10)
            if index % 2:  # half never finish their headers, half never send any
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        opened = time.monotonic()
        # one that sends its headers a byte at a time, each byte well within the keep-alive time (the newest
        # connection: the bound closes older ones first)
        trickler = socket.create_connection(address, timeout=10)
        trickle = iter(b"GET /health HTTP/1.1\r\nHost: " + b"x" * 10_000)
        idle = socket.create_connection(address, timeout=10)  # as `kept`, but among the newest
        idle.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        idle_since, idle_closed_at = time.monotonic(), None
        others = [kept, trickler, idle]
        for _ in range(5):
            health = requests.get(f"{server.url}/health", timeout=10)
            assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        # past MAX_CONNECTIONS the longest waiting were closed as the others came: the kept one first
        early = sum(_closed_by_server(sock) for sock in [kept, *sockets])
        assert early >= IDLE_SOCKETS + 2 - MAX_CONNECTIONS, early
        if time.monotonic() - opened < HEADER_TIMEOUT_SECONDS / 2:
            assert early < IDLE_SOCKETS, "the sockets under the bound are closed by the deadline, not at once"

        # every one closed by its deadline; the slack is the deadline itself again
        deadline = opened + 2 * HEADER_TIMEOUT_SECONDS + KEEP_ALIVE_SECONDS
        open_ones, trickled, trickler_closed_at = [kept, *sockets], 0, None
        while open_ones or trickler_closed_at is None or idle_closed_at is None:
            assert time.monotonic() < deadline, f"{len(open_ones)} sockets still open, trickler closed: " \
                                                f"{trickler_closed_at is not None}"
            open_ones = [sock for sock in open_ones if not _closed_by_server(sock)]
            if idle_closed_at is None and _closed_by_server(idle):
                idle_closed_at = time.monotonic()
            if trickler_closed_at is None:
                try:
                    trickler.sendall(bytes([next(trickle)]))
                    trickled += 1
                except OSError:
                    trickler_closed_at = time.monotonic()
                if _closed_by_server(trickler):
                    trickler_closed_at = time.monotonic()
            time.sleep(0.5)
        print(f"{IDLE_SOCKETS} idle sockets: {early} closed at once (MAX_CONNECTIONS={MAX_CONNECTIONS}), the rest "
              f"within {time.monotonic() - opened:.1f} s; the trickler sent {trickled} bytes before it was cut; "
              f"an idle keep-alive connection closed after {idle_closed_at - idle_since:.1f} s")
        assert trickler_closed_at - opened >= HEADER_TIMEOUT_SECONDS - 0.5, "cut by the header deadline"
        assert idle_closed_at - idle_since >= KEEP_ALIVE_SECONDS - 0.5, "closed by the keep-alive time"
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        for sock in sockets + others:
            sock.close()
    assert "Exceeded concurrency limit" not in server.log()


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the answer on `sock` (read until the server closes it)."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {key.lower(): value for key, value in headers.items()}, body


def _start_upload(port: int, size: int) -> socket.socket:
    """A POST /generate that announces `size` bytes of body and sends a first few."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 f"Content-Length: {size}\r\n\r\n--b\r\n".encode())
    return sock


def test_uploads_in_flight_are_bounded_and_the_next_is_refused_before_its_body(server):
    uploading: list[socket.socket] = []
    try:
        # SERVER_QUEUE_SIZE=1: two jobs at most (one running, one waiting), so two bodies at once
        for _ in range(2):
            uploading.append(_start_upload(server.port, 5_000_000))
        server.wait_for_health(lambda health: health["receiving"] == 2, "both bodies to be arriving")
        refused = _start_upload(server.port, 5_000_000)  # its body is never sent: the answer comes first
        status, headers, body = _answer(refused)
        refused.close()
        assert status == 429, body
        assert headers["retry-after"].isdigit() and headers["connection"] == "close"
        assert json.loads(body)["error"].startswith(
            "INTERNAL: the server is busy: 2 request bodies are arriving already, as many as it can hold jobs "
            "(SERVER_QUEUE_SIZE=1 + the running one)"), body
        for sock in uploading:  # hanging up frees the places
            sock.close()
        server.wait_for_health(lambda health: health["receiving"] == 0, "the hung-up uploads to end")
        reply = requests.post(f"{server.url}/generate", files=SAMPLE_FILES, data={"resolution": "128*128"},
                              timeout=120)
        assert reply.status_code == 200, reply.text
    finally:
        for sock in uploading:
            sock.close()


def test_a_body_past_the_limit_without_content_length_is_refused_once_the_limit_is_read(keyed_server):
    from handler.http_input import body_limit

    limit = body_limit(KEYED_MAX_INPUT_BYTES)
    server = keyed_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + API_KEYS[0].encode() + b"\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk, sent = b"[{}," * 16384, 0
        with contextlib.suppress(OSError):  # the server closes the connection once it has answered
            while sent < 3 * limit and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        status, headers, body = _answer(sock)
    assert status == 413, body
    assert headers["connection"] == "close"
    assert json.loads(body)["error"].startswith("TOO_LARGE: the request body is larger than")
    assert sent < 3 * limit, "refused while the body still came, not at its end"
    assert server.health()["receiving"] == 0


def test_while_the_model_loads_the_api_key_is_checked_before_the_starting_answer_and_a_stop_ends_it(tmp_path):
    from tests.test_server import _held_server

    with _held_server(tmp_path, {"SERVER_API_KEY": API_KEYS[0]}) as (url, gate, process):
        for request in (lambda headers: requests.post(f"{url}/generate", files=SAMPLE_FILES, headers=headers,
                                                      timeout=60),
                        lambda headers: requests.get(f"{url}/download/anything", headers=headers, timeout=60)):
            refused = request({})
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"].startswith("INVALID_INPUT: this server requires an API key")
            assert request({"Authorization": "Bearer wrong"}).status_code == 401
            starting = request({"Authorization": f"Bearer {API_KEYS[0]}"})
            assert starting.status_code == 503 and starting.headers["Retry-After"].isdigit(), starting.text
            assert starting.json()["error"].startswith("MODEL_UNAVAILABLE: the server is starting")
        assert requests.get(f"{url}/health", timeout=10).json()["status"] == "starting"  # open, as once loaded
        assert requests.get(f"{url}/ping", timeout=10).status_code == 204
        assert not gate.exists(), "all of it while the model loads"
        # a stop while the model loads ends the server
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    log = (tmp_path / "server.log").read_text()
    assert "Finished server process" in log, "uvicorn's own shutdown ran"
    assert API_KEYS[0] not in log


def test_download_urls_come_from_the_server_not_the_clients_host_header(server, keyed_server):
    """A client's Host header never reaches download_url: SERVER_PUBLIC_URL's base, else the
    address the connection reached (the module's server: no SERVER_PUBLIC_URL)."""
    for reached, expected, headers in ((server, server.url, {}), (keyed_server, PUBLIC_URL, _bearer())):
        reply = requests.post(f"{reached.url}/generate", files=SAMPLE_FILES, data={"resolution": "128*128"},
                              headers={"Host": "evil.example:666", **headers}, timeout=120)
        assert reply.status_code == 200, reply.text
        url = reply.json()["download_url"]
        assert "evil.example" not in url
        assert url.startswith(f"{expected}/download/"), url
