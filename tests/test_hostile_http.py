"""Hostile requests against the HTTP doors on 127.0.0.1: every refusal of the always-on server is the
contract's JSON error, whatever route, method, framing or body; a client's names never reach an
answer or a log line raw or unbounded (the always-on server and the RunPod local API); a body that
trickles is cut at its minimum rate; a disk that fills under an upload is TOO_LARGE. After each, the
next job still works."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import resource
import select
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from handler.client_text import SHOWN_CHARACTERS, shown, shown_value
from tests.test_server import MAX_INPUT_BYTES, PORTRAIT, SAMPLE_FILES, SPEECH, ServerProcess

# The longest sentence a refusal here may carry: a client's text is cut to SHOWN_CHARACTERS in it.
MAX_ERROR_CHARACTERS = 500
CODES = ("INVALID_INPUT", "UNSUPPORTED_MEDIA", "TOO_LARGE", "INTERNAL")
# A name that would start a log line of its own, one that recolours a terminal, one a megabyte long, a
# Unicode line separator and a lone surrogate (which no UTF-8 encoder writes).
FORGED = "FORGED-LINE 2026-01-01 00:00:00,000 INFO handler.job: job x done"
HOSTILE_NAMES = ("evil\n" + FORGED, "\x1b[31mred\x1b[0m", "n" * 1_000_000, "a\u2028b\rc", "\ud800")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    process = ServerProcess({"MODEL_BACKEND": "lite", "MAX_INPUT_BYTES": str(MAX_INPUT_BYTES)},
                            tmp_path_factory.mktemp("hostile-http"))
    yield process
    process.stop()


def _request(method: str, path: str, body: bytes = b"", content_type: str | None = None,
             headers: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"Content-Length: %d\r\n" % len(body) + headers + b"\r\n" + body


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What the server sends on `sock` until it closes it (True), or `timeout` passes (False)."""
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.1)[0]:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {key.lower(): value for key, value in headers.items()}, body


def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        data, closed = _read_until_closed(sock, 30)
    assert closed, data[:300]
    return _parse(data)


def _assert_safe(text: str) -> None:
    """Bounded, and nothing in it that would start a line, move a terminal's cursor or fail to encode."""
    assert len(text) <= MAX_ERROR_CHARACTERS, (len(text), text[:300])
    assert all(char.isprintable() for char in text), ascii(text[:300])
    text.encode("utf-8")


def _contract_error(status: int, headers: dict[str, str], body: bytes, expected_status: int) -> str:
    """The contract's error in an answer: its sentence, once checked."""
    assert status == expected_status, (status, body[:300])
    assert headers["content-type"] == "application/json", headers
    answer = json.loads(body)
    assert answer["success"] is False and set(answer) <= {"success", "request_id", "error"}, answer
    error = answer["error"]
    code = error.split(": ", 1)[0]
    assert code in CODES, error
    _assert_safe(error)
    return error


def _multipart(boundary: str, *parts: bytes, closed: bool = True) -> bytes:
    body = b"".join(b"--%s\r\n%s\r\n" % (boundary.encode(), part) for part in parts)
    return body + (b"--%s--\r\n" % boundary.encode() if closed else b"")


FILE_PART = b'Content-Disposition: form-data; name="audio_file"; filename="a.wav"\r\n\r\nRIFF' + b"0" * 100
JSON = "application/json"
DEEP_SEED = b'{"audio_file": "a", "image_file": "b", "seed": ' + b"[" * 500 + b"]" * 500 + b"}"
DEEP_STEPS = b'{"steps": ' + b"[" * 500 + b"]" * 500 + b"}"
MULTIPART = "multipart/form-data; boundary=zzz"
HOSTILE_REQUESTS = [
    # (what, the raw request, the status, the start of the sentence)
    ("a lone surrogate in a field name, escaped", _request("POST", "/generate", b'{"\\ud800": 1}', JSON), 400,
     "INVALID_INPUT: the input has a field named '\\ud800'"),
    ("a lone surrogate in a field name, as UTF-8 bytes", _request("POST", "/generate", b'{"\xed\xa0\x80": 1}', JSON),
     400, "INVALID_INPUT: the input has a field named '\\ud800'"),
    ("JSON lists nested 5,000 deep", _request("POST", "/generate", b"[" * 5000 + b"]" * 5000, JSON), 400,
     "INVALID_INPUT: the request body is nested too deeply"),
    ("JSON objects nested 5,000 deep", _request("POST", "/generate", b'{"a":' * 5000 + b"1" + b"}" * 5000, JSON),
     400, "INVALID_INPUT: the request body is nested too deeply"),
    ("a shared field nested 500 deep", _request("POST", "/generate", DEEP_SEED, JSON), 400,
     "INVALID_INPUT: seed must be a whole number from 0 to 9223372036854775807, not a list of 1 item."),
    ("a backend's field nested 500 deep", _request("POST", "/generate", DEEP_STEPS, JSON), 400,
     "INVALID_INPUT: steps must be a string, a number or a boolean, not a list"),
    ("a backend's field of 5,000 characters", _request("POST", "/generate", b'{"steps": "%s"}' % (b"s" * 5000), JSON),
     400, "INVALID_INPUT: steps is 5000 characters long; keep it under 2000."),
    ("a backend's field of 101 digits", _request("POST", "/generate", b'{"steps": 1%s}' % (b"0" * 100), JSON), 400,
     "INVALID_INPUT: steps is a whole number of about 101 digits, larger than any field takes"),
    ("200,000 JSON items", _request("POST", "/generate", b"[" + b"{}," * 200_000 + b"{}]", JSON), 400,
     "INVALID_INPUT: the request body holds 400002 JSON items"),
    ("a body that is not UTF-8", _request("POST", "/generate", b'{"prompt": "\xff\xfe"}', JSON), 400,
     "INVALID_INPUT: the request body is not UTF-8"),
    ("JSON that is not JSON", _request("POST", "/generate", b'{"prompt": ', JSON), 400,
     "INVALID_INPUT: the request body is not valid JSON"),
    ("a multipart form without a boundary", _request("POST", "/generate", b"--zzz\r\n", "multipart/form-data"), 400,
     "INVALID_INPUT: the multipart form could not be read (Missing boundary"),
    ("a multipart form with another boundary", _request("POST", "/generate", _multipart("yyy", FILE_PART), MULTIPART),
     400, "INVALID_INPUT: the multipart form could not be read (Invalid multipart data"),
    ("a multipart form cut inside a part", _request("POST", "/generate", _multipart("zzz", FILE_PART)[:-50],
                                                    MULTIPART), 400,
     "INVALID_INPUT: the multipart form could not be read (the body ended before the form's closing boundary)"),
    ("a multipart form without its closing boundary",
     _request("POST", "/generate", _multipart("zzz", FILE_PART, closed=False), MULTIPART), 400,
     "INVALID_INPUT: the multipart form could not be read (the body ended before the form's closing boundary)"),
    ("a multipart part without a name", _request("POST", "/generate", _multipart("zzz", b"\r\nx"), MULTIPART), 400,
     "INVALID_INPUT: the multipart form could not be read (The Content-Disposition header"),
    ("text/plain", _request("POST", "/generate", b"hello", "text/plain"), 415,
     "INVALID_INPUT: Content-Type 'text/plain' is not accepted"),
    ("no Content-Type", _request("POST", "/generate", b"hello"), 415,
     "INVALID_INPUT: Content-Type none is not accepted"),
    ("a Content-Type of 5,000 characters", _request("POST", "/generate", b"x", "text/" + "x" * 5000), 415,
     "INVALID_INPUT: Content-Type 'text/xxx"),
    ("an unknown route", _request("GET", "/nope"), 404, "INVALID_INPUT: there is nothing at /nope on this server"),
    ("an unknown route, posted", _request("POST", "/generate/more", b"{}", JSON), 404,
     "INVALID_INPUT: there is nothing at /generate/more"),
    ("a route of escapes", _request("GET", "/%0a%1b[31m%e2%80%a8"), 404,
     "INVALID_INPUT: there is nothing at /\\n\\x1b[31m\\u2028 on this server"),
    ("a route 5,000 characters long", _request("GET", "/" + "r" * 5000), 404,
     f"INVALID_INPUT: there is nothing at /{'r' * (SHOWN_CHARACTERS - 1)}… (5001 characters)"),
    ("GET /generate", _request("GET", "/generate"), 405, "INVALID_INPUT: /generate does not take GET: it takes POST"),
    ("DELETE /download/x", _request("DELETE", "/download/x"), 405,
     "INVALID_INPUT: /download/x does not take DELETE: it takes GET"),
    ("PUT /health", _request("PUT", "/health", b"{}", JSON), 405, "INVALID_INPUT: /health does not take PUT"),
    ("a Content-Length that is no number", b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
     "INVALID_INPUT: the request is not valid HTTP/1.1"),
    ("a TLS hello on the plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400,
     "INVALID_INPUT: the request is not valid HTTP/1.1"),
    ("a chunked body with a broken chunk", b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "INVALID_INPUT: the request is not valid HTTP"),
]


def test_every_refusal_is_the_contracts_json_error_and_the_next_job_runs(server):
    for what, raw, status, start in HOSTILE_REQUESTS:
        try:
            error = _contract_error(*_exchange(server.port, raw), status)
        except AssertionError as failure:
            raise AssertionError(f"{what}: {failure}") from None
        assert error.startswith(start), (what, error)
    assert server.health()["status"] == "ok"
    reply = requests.post(f"{server.url}/generate", files=SAMPLE_FILES, data={"resolution": "128*128"}, timeout=120)
    assert reply.status_code == 200, reply.text
    download = reply.json()["download_url"]
    size = reply.json()["file_size_bytes"]
    path = "/" + download.split("/", 3)[3]
    # a Range the video cannot serve: FileResponse's plain text, made the contract's error
    for asked, status in (("bytes=abc", 400), ("items=0-1", 400), (f"bytes={size}-", 416), ("bytes=9-3", 400)):
        answer = _exchange(server.port, _request("GET", path, headers=f"Range: {asked}\r\n".encode()))
        error = _contract_error(*answer, status)
        assert error.startswith("INVALID_INPUT: the Range header"), error
        if status == 416:
            assert answer[1]["content-range"] == f"bytes */{size}"
    part = requests.get(download, headers={"Range": "bytes=10-19"}, timeout=30)
    assert part.status_code == 206 and len(part.content) == 10
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log


def _peak_memory_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def test_a_json_body_of_millions_of_items_is_refused_before_it_is_parsed(server):
    """3.5 million empty objects in 10 MB of JSON take 264 MB parsed (measured in one process); refused unparsed,
    the server's peak memory grows by little more than the body."""
    body = b"[" + b"{}," * 3_500_000 + b"{}]"
    peak = _peak_memory_bytes(server.process.pid)
    reply = requests.post(f"{server.url}/generate", data=body, headers={"Content-Type": JSON}, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith("INVALID_INPUT: the request body holds 7000002 JSON items")
    grown = _peak_memory_bytes(server.process.pid) - peak
    print(f"a 10.5 MB body of 3.5 million JSON objects: the server's peak memory grew {grown / 1e6:.0f} MB")
    assert grown < 10 * len(body), grown
    assert server.health()["status"] == "ok"


def _assert_log_has_no_forgery(log: str) -> None:
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith("FORGED-LINE")], "a client's name started a log line"
    assert "\x1b" not in log and "\u2028" not in log and "\ud800" not in log
    assert max(len(line) for line in lines) < 2000, "a client's megabyte-long name reached the log"


def _job(**fields) -> dict:
    return {"audio_file": base64.b64encode(SPEECH).decode(), "image_file": base64.b64encode(PORTRAIT).decode(),
            **fields}


def test_client_names_are_escaped_and_cut_in_the_servers_answers_and_log(server):
    generate = f"{server.url}/generate"
    answers = []
    for name in HOSTILE_NAMES:
        # a field of the job (the JSON body's keys, written as JSON escapes where they must be)
        body = json.dumps(_job(**{name: 1})).encode()
        answers.append((name, requests.post(generate, data=body, headers={"Content-Type": JSON}, timeout=60)))
    # a form's field names, as text and as a file, once and twice (python-multipart refuses a part's headers
    # past 4 kB, which a file part with a name and a file name of 1,500 stays under: Invalid multipart data)
    for name in ("\x1b[31mred\x1b[0m", "n" * 1500):
        answers.append((name, requests.post(generate, files={**SAMPLE_FILES, name: b"x"}, timeout=60)))
        answers.append((name, requests.post(generate, files=[*SAMPLE_FILES.items(), (name, (None, "1")),
                                                              (name, (None, "2"))], timeout=60)))
    for value in ("x\n" * 900, "\x1b[2J" * 5, "z" * 1_000_000):  # values, escaped and cut as well
        for field in ("mode", "resolution", "stream"):
            answers.append((value, requests.post(generate, data=json.dumps(_job(**{field: value})),
                                                 headers={"Content-Type": JSON}, timeout=60)))
    for sent, reply in answers:
        assert reply.status_code == 400, reply.text[:300]
        error = reply.json()["error"]
        assert error.startswith("INVALID_INPUT: "), error
        _assert_safe(error)
        assert shown(sent)[:40] in error, (error, shown(sent)[:40])
    assert server.health()["status"] == "ok"
    _assert_log_has_no_forgery(server.log())
    reply = requests.post(generate, files=SAMPLE_FILES, data={"resolution": "128*128"}, timeout=120)
    assert reply.status_code == 200, reply.text


def test_client_names_are_escaped_and_cut_on_the_runpod_local_api(plain_worker):
    for name in HOSTILE_NAMES:
        reply = plain_worker.runsync(_job(**{name: 1}))
        assert reply["status"] == "FAILED", str(reply)[:300]
        error = reply["error"]
        assert error.startswith(f"INVALID_INPUT: the input has a field named {shown_value(name)[:40]}"), error
        _assert_safe(error)
    reply = plain_worker.runsync(_job(mode="x\n" * 900))
    assert reply["status"] == "FAILED" and reply["error"].startswith("INVALID_INPUT: mode must be one of")
    _assert_safe(reply["error"])
    _assert_log_has_no_forgery(plain_worker.log())
    assert plain_worker.runsync(_job(resolution="128*128"))["status"] == "COMPLETED"


def test_a_trickling_body_is_cut_at_the_minimum_rate_while_health_answers(server):
    from handler.http_input import BODY_RATE_GRACE_SECONDS
    from handler.http_server import BODY_READ_SECONDS

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        started, sent, health = time.monotonic(), 0, set()
        # a byte each half second (JSON whitespace), until the server answers; /health meanwhile
        while not select.select([sock], [], [], 0.5)[0]:
            assert time.monotonic() - started < BODY_READ_SECONDS / 2, "the trickle was never cut"
            sock.sendall(b" ")
            sent += 1
            health.add(requests.get(f"{server.url}/health", timeout=10).status_code)
        answered = time.monotonic() - started
        data, closed = _read_until_closed(sock, 30)
    finally:
        sock.close()
    print(f"a body trickling a byte each 0.5 s was answered after {answered:.1f} s and {sent} bytes")
    assert closed, "the server closes the connection of a body it cut"
    error = _contract_error(*_parse(data), 408)
    received = re.match(r"INVALID_INPUT: the request body arrived too slowly: (\d+) bytes in ", error)
    assert received is not None and sent - 1 <= int(received.group(1)) <= sent, (sent, error)
    assert BODY_RATE_GRACE_SECONDS - 1 <= answered <= 3 * BODY_RATE_GRACE_SECONDS
    assert health == {200}
    assert server.health()["receiving"] == 0
    reply = requests.post(f"{server.url}/generate", files=SAMPLE_FILES, data={"resolution": "128*128"}, timeout=120)
    assert reply.status_code == 200, reply.text


def test_a_disk_that_fills_while_an_upload_is_spooled_is_too_large_and_the_next_job_runs(server):
    """The server's files may grow to `limit` bytes (RLIMIT_FSIZE, set on the running server: a write
    past it fails with EFBIG, as one to a full disk fails with ENOSPC; Python ignores SIGXFSZ). A
    form's file larger than Starlette's 1 MB in-memory spool goes to a file past that limit."""
    pid = server.process.pid
    before = set(server.leftovers())
    limit = server.log_path.stat().st_size + 2_000_000  # the log, which the server writes, stays writable
    audio = b"\0" * (limit + 1_000_000)
    assert len(audio) < MAX_INPUT_BYTES
    original = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, original[1]))
    try:
        reply = requests.post(f"{server.url}/generate", files={"audio_file": audio, "image_file": PORTRAIT},
                              timeout=60)
        assert server.health()["status"] == "ok"
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, original)
    assert reply.status_code == 413, reply.text
    assert reply.headers["Connection"] == "close"
    assert reply.json()["error"] == ("TOO_LARGE: the request body does not fit on the server's disk, which is full "
                                     "(EFBIG: File too large); send smaller files, or try again later.")
    assert set(server.leftovers()) == before, "the spooled part is gone"
    told = [line for line in server.log().splitlines() if "refused: TOO_LARGE: the request body does not fit" in line]
    assert told and "WARNING" in told[-1], "the operator is told"
    reply = requests.post(f"{server.url}/generate", files=SAMPLE_FILES, data={"resolution": "128*128"}, timeout=120)
    assert reply.status_code == 200, reply.text


def test_shown_escapes_every_unprintable_character_and_cuts_long_text():
    assert shown("plain name") == "plain name"
    assert shown("a\nb\r\tc\x1b[0m\\") == "a\\nb\\r\\tc\\x1b[0m\\\\"
    assert shown("\u2028\u202e\ud800\u200b") == "\\u2028\\u202e\\ud800\\u200b"
    assert shown("é日本") == "é日本"
    long = shown("n" * 1_000_000)
    assert long == "n" * SHOWN_CHARACTERS + "… (1000000 characters)"
    escapes = shown("\x00" * 1000)
    assert escapes.startswith("\\x00" * (SHOWN_CHARACTERS // 4)) and escapes.endswith("… (1000 characters)")
    assert len(escapes) <= SHOWN_CHARACTERS + len("… (1000 characters)")
    assert shown_value("x\ny") == "'x\\ny'"
    assert shown_value([[1]] * 10**6) == "a list of 1000000 items"
    assert shown_value({"a": 1}) == "an object of 1 item"
    assert shown_value(10**4000).startswith("a whole number of about 4001 digits")
    assert shown_value(1.5) == "1.5" and shown_value(True) == "True" and shown_value(None) == "None"


def test_the_minimum_body_rate_is_a_setting_that_zero_turns_off():
    from handler.settings import SettingsError, WorkerSettings

    assert WorkerSettings.from_env({}).server_min_body_bytes_per_second == 10_000
    assert WorkerSettings.from_env({"SERVER_MIN_BODY_BYTES_PER_SECOND": "0"}).server_min_body_bytes_per_second == 0
    for bad in ("-1", "fast", "1e12"):
        with pytest.raises(SettingsError, match="SERVER_MIN_BODY_BYTES_PER_SECOND"):
            WorkerSettings.from_env({"SERVER_MIN_BODY_BYTES_PER_SECOND": bad})



def test_the_body_rate_counts_the_clients_time_not_the_servers(monkeypatch):
    """In-process: a body whose bytes are there whenever the server asks is never cut, however long
    the server takes between reads; one that keeps it waiting is cut at the grace plus its credit."""
    from handler import http_input

    monkeypatch.setattr(http_input, "BODY_RATE_GRACE_SECONDS", 0.3)

    async def read(gap_in_client: float, gap_in_server: float, chunks: int) -> int:
        async def receive():
            await asyncio.sleep(gap_in_client)
            return {"type": "http.request", "body": b"x" * 100, "more_body": True}

        guarded = http_input._guarded(receive, 10**9, min_bytes_per_second=1000)
        taken = 0
        for _ in range(chunks):
            await guarded()
            taken += 1
            await asyncio.sleep(gap_in_server)
        return taken

    # the server spends 0.2 s on each chunk (1.2 s in all), its client none: not cut
    assert asyncio.run(read(0.0, 0.2, 6)) == 6
    # the client sends 100 bytes each 0.02 s, 5,000 bytes a second (5 times the minimum): not cut
    assert asyncio.run(read(0.02, 0.0, 50)) == 50
    # 100 bytes each 0.2 s, 500 bytes a second: cut once 0.3 s + 0.1 s per 100 bytes is spent waiting
    started = time.monotonic()
    with pytest.raises(http_input._BodyTooSlow) as slow:
        asyncio.run(read(0.2, 0.0, 100))
    assert 0.3 <= slow.value.waited <= time.monotonic() - started + 0.05
    assert slow.value.received <= 500


def test_a_crash_answers_the_contracts_json_error_without_its_text():
    from handler.http_server import _Starting

    async def crashing(scope, receive, send):
        raise RuntimeError("boom\n" + FORGED)

    starting = _Starting(lambda: None, ())  # type: ignore[arg-type, return-value]
    starting._app = crashing  # type: ignore[assignment]
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/health", "headers": [], "query_string": b""}
    with pytest.raises(RuntimeError):  # raised again, for uvicorn to log its traceback
        asyncio.run(starting(scope, receive, send))
    assert sent[0]["status"] == 500
    answer = json.loads(sent[1]["body"])
    assert answer == {"success": False, "error": "INTERNAL: the server failed while answering this request "
                                                 "(its log has the details); try again."}


def test_past_uvicorns_concurrency_limit_the_answer_is_the_contracts_json_error():
    """In-process: the guarded protocol with limit_concurrency=2, one request held in progress; the
    next connection's request gets uvicorn's 503, in the contract's shape."""
    import threading

    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from handler.http_server import _connection_guard
    from tests.conftest import free_port

    release = threading.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while scope["path"] == "/held" and not release.is_set():
            await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False,
                            http=_connection_guard(AutoHTTPProtocol, 10.0, 200), limit_concurrency=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        held = socket.create_connection(("127.0.0.1", port), timeout=30)
        held.sendall(_request("GET", "/held"))
        time.sleep(0.3)  # its request in progress
        error = _contract_error(*_exchange(port, _request("GET", "/other")), 503)
        assert error.startswith("INTERNAL: the server is answering as many requests as it takes at once"), error
        release.set()
        data, closed = _read_until_closed(held, 30)
        held.close()
        assert closed and _parse(data)[0] == 200
        assert _exchange(port, _request("GET", "/other"))[0] == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=30)
