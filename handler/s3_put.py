"""One HTTP PUT (or HEAD) of an object that ends by a deadline, whatever the server does.

Per-operation socket timeouts do not bound a whole request: a server may accept, read slowly and
answer a byte at a time, each wait under the timeout. So a watchdog cuts the connection when the
deadline passes, and every wait in between ends with it: connecting (at most `connect_timeout`),
sending, and the wait for the answer, which may be long (a store that checks a large object) and
gets whatever is left of the deadline. A stop of the job (its JobControl: cancel, SIGTERM) cuts
the connection too, at once, and raises JobCancelled. The connection goes to an address the
caller resolved (and checked) itself; TLS still verifies the URL's host name.

Once the whole body is sent, the outcome is unknown until the answer comes: the store may hold
the object and the answer be lost or late. So a PUT can be given a `check` (a HEAD of the object,
`head_file`) that runs beside the wait for the answer from `check_at` on: when it finds the object
(`object_matches`: its size, and its ETag where that is the body's MD5), the wait ends there, and
a retry is never needed for an object the store already holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import IO, cast

import certifi
import urllib3
import urllib3.connection

from handler.cancel import JobCancelled, JobControl

log = logging.getLogger(__name__)

# The start of an error answer is enough to read its code; the rest is not waited for.
MAX_ANSWER_BYTES = 64 * 1024
# A single-part upload's ETag is the hex MD5 of its body (S3, MinIO, R2, B2...); others (multipart,
# SSE-KMS) are not, and then the size alone says the object is there.
MD5_ETAG = re.compile(r'^(?:W/)?"?([0-9a-fA-F]{32})"?$')


@dataclasses.dataclass(frozen=True)
class PutAnswer:
    status: int
    #: the beginning of the answer's body (an S3 error's XML)
    body: bytes
    #: no answer came, but the check found the object in the store: it holds what was sent
    found_by_check: bool = False


@dataclasses.dataclass(frozen=True)
class HeadAnswer:
    status: int
    #: the answer's headers, names in lower case
    headers: dict[str, str]


class PutFailed(Exception):
    """No answer: `kind` is "timeout" (the deadline passed), "connect" (nobody accepted the
    connection) or "broken" (the connection broke off, or TLS failed). `sent_md5` is the hex MD5
    of the body when all of it was sent: the store may then hold the object (check before a retry)."""

    def __init__(self, kind: str, sent_md5: str | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.sent_md5 = sent_md5


#: does the store hold the object? Called with the MD5 of the body as sent (hex) and the deadline.
Check = Callable[[str, float], bool]


def put_file(
    url: str, address: str, file: IO[bytes], size: int, headers: dict[str, str], deadline: float,
    connect_timeout: float, control: JobControl | None = None, check: Check | None = None,
    check_at: float | None = None,
) -> PutAnswer:
    """PUT `size` bytes of `file` to `url`, connecting to `address`; raises PutFailed by `deadline`,
    and JobCancelled as soon as `control` is stopped. With `check`, from `check_at` (default: the
    deadline, i.e. never) a store that holds the object ends the wait for the answer."""
    reader = _DeadlineReader(file, deadline)
    found = threading.Event()
    started: list[threading.Timer] = []

    def sent(cut: Callable[[], None]) -> None:
        if check is None or check_at is None or check_at >= deadline:
            return
        digest = reader.md5.hexdigest()

        def run_check() -> None:
            try:
                if check(digest, deadline):
                    found.set()
                    cut()
            except (JobCancelled, PutFailed):
                pass  # the stop or the deadline ends the PUT's own wait as well
            except Exception:  # noqa: BLE001 - a failed check leaves the wait for the answer as it was
                log.exception("checking whether the store holds the object failed")

        checker = threading.Timer(max(0.0, check_at - time.monotonic()), run_check)
        checker.daemon = True
        checker.start()
        started.append(checker)

    file.seek(0)
    try:
        status, _, body = _exchange(
            "PUT", url, address, {"Content-Length": str(size), **headers}, deadline, connect_timeout, control,
            # urllib3 streams any body with a read() (body_to_chunks); its annotation asks for a whole IO
            body=cast(IO[bytes], reader), on_sent=sent,
        )
    except PutFailed as failed:
        if found.is_set():
            return PutAnswer(200, b"", found_by_check=True)
        raise PutFailed(failed.kind, reader.md5.hexdigest() if reader.read_bytes >= size else None) from None
    finally:
        for checker in started:
            checker.cancel()
    return PutAnswer(status, body)


def head_file(
    url: str, address: str, deadline: float, connect_timeout: float, control: JobControl | None = None,
) -> HeadAnswer:
    """HEAD `url` (connecting to `address`) by `deadline`: raises PutFailed, or JobCancelled on a stop."""
    status, headers, _ = _exchange("HEAD", url, address, {}, deadline, connect_timeout, control)
    return HeadAnswer(status, headers)


def object_matches(answer: HeadAnswer, size: int, md5: str) -> bool:
    """The HEAD of an object says it is the body sent: its size, and its MD5 where the ETag is one."""
    if answer.status != 200 or answer.headers.get("content-length") != str(size):
        return False
    etag = MD5_ETAG.match(answer.headers.get("etag", "").strip())
    return etag is None or etag.group(1).lower() == md5


def _exchange(
    method: str, url: str, address: str, headers: dict[str, str], deadline: float, connect_timeout: float,
    control: JobControl | None, body: IO[bytes] | None = None,
    on_sent: Callable[[Callable[[], None]], None] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request by `deadline`: (status, headers in lower case, the start of the body)."""
    if control is not None:
        control.check()
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PutFailed("timeout")
    parsed = urllib.parse.urlsplit(url)
    connection = _connection(parsed, address, min(connect_timeout, remaining))
    cut = threading.Event()
    watchdog = threading.Timer(remaining, _cut, (connection, cut))
    watchdog.daemon = True
    watchdog.start()
    phase = "connect"
    try:
        with contextlib.ExitStack() as stack:
            if control is not None:
                stack.enter_context(control.interrupting(lambda: _cut(connection, cut)))
            connection.connect()
            phase = "send"
            # urllib3 sets the socket's timeout to this before it sends and again before it waits for
            # the answer: what is left of the deadline, not the connect timeout it was made with
            connection.timeout = _left(deadline)
            target = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
            connection.request(method, target, body=body, headers={"Host": parsed.netloc, **headers},
                               preload_content=False)
            phase = "answer"
            if on_sent is not None:
                on_sent(lambda: _cut(connection, cut))
            connection.timeout = _left(deadline)
            response = connection.getresponse()
            answer_headers = {name.lower(): value for name, value in response.headers.items()}
            answer_body = b"" if method == "HEAD" else response.read(MAX_ANSWER_BYTES)
    except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError, _DeadlinePassed) as error:
        if control is not None:
            control.check()
        raise PutFailed(_failure_kind(error, phase, cut.is_set())) from None
    finally:
        watchdog.cancel()
        connection.close()
    if control is not None:
        control.check()
    if cut.is_set():  # what was read before the cut may parse as an answer; it is not one
        raise PutFailed("timeout")
    return response.status, answer_headers, answer_body


def _left(deadline: float) -> float:
    return max(0.01, deadline - time.monotonic())


def _connection(
    parsed: urllib.parse.SplitResult, address: str, connect_timeout: float,
) -> urllib3.connection.HTTPConnection:
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if parsed.scheme == "https":
        return urllib3.connection.HTTPSConnection(
            address, port, timeout=connect_timeout, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where(),
            server_hostname=parsed.hostname, assert_hostname=parsed.hostname,
        )
    return urllib3.connection.HTTPConnection(address, port, timeout=connect_timeout)


def _failure_kind(error: Exception, phase: str, cut: bool) -> str:
    if isinstance(error, urllib3.exceptions.NewConnectionError):  # refused, unreachable
        return "connect"
    if cut or isinstance(error, (_DeadlinePassed, TimeoutError, urllib3.exceptions.TimeoutError)):
        return "timeout"
    return "connect" if phase == "connect" else "broken"


def _cut(connection: urllib3.connection.HTTPConnection, cut: threading.Event) -> None:
    """The deadline passed (or the check found the object): end whatever the request is waiting for."""
    cut.set()
    sock = connection.sock
    if sock is not None:
        # socket.socket's own shutdown, also for a TLS socket: it wakes the waiting thread without
        # touching the TLS state that thread is using
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _DeadlinePassed(Exception):
    pass


class _DeadlineReader:
    """The file as it is sent, refusing to go on once the deadline has passed; it hashes what it
    hands out (MD5: what S3's ETag of a single-part upload is)."""

    def __init__(self, file: IO[bytes], deadline: float) -> None:
        self._file = file
        self._deadline = deadline
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            raise _DeadlinePassed()
        data = self._file.read(size)
        self.md5.update(data)
        self.read_bytes += len(data)
        return data
