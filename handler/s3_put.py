"""One HTTP PUT of a file that ends by a deadline, whatever the server does.

Per-operation socket timeouts do not bound a whole request: a server may accept, read slowly and
answer a byte at a time, each wait under the timeout. So a watchdog cuts the connection when the
deadline passes, and every wait in between ends with it: connecting (at most `connect_timeout`),
sending, and the wait for the answer, which may be long (a store that checks a large object) and
gets whatever is left of the deadline. A stop of the job (its JobControl: cancel, SIGTERM) cuts
the connection too, at once, and raises JobCancelled. The connection goes to an address the
caller resolved (and checked) itself; TLS still verifies the URL's host name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import socket
import threading
import time
import urllib.parse
from typing import IO, cast

import certifi
import urllib3
import urllib3.connection

from handler.cancel import JobControl

# The start of an error answer is enough to read its code; the rest is not waited for.
MAX_ANSWER_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class PutAnswer:
    status: int
    #: the beginning of the answer's body (an S3 error's XML)
    body: bytes


class PutFailed(Exception):
    """No answer: `kind` is "timeout" (the deadline passed), "connect" (nobody accepted the
    connection) or "broken" (the connection broke off, or TLS failed)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def put_file(
    url: str, address: str, file: IO[bytes], size: int, headers: dict[str, str], deadline: float,
    connect_timeout: float, control: JobControl | None = None,
) -> PutAnswer:
    """PUT `size` bytes of `file` to `url`, connecting to `address`; raises PutFailed by `deadline`,
    and JobCancelled as soon as `control` is stopped."""
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
            file.seek(0)
            connection.request(
                # urllib3 streams any body with a read() (body_to_chunks); its annotation asks for a whole IO
                "PUT", target, body=cast(IO[bytes], _DeadlineReader(file, deadline)),
                headers={"Host": parsed.netloc, "Content-Length": str(size), **headers}, preload_content=False,
            )
            phase = "answer"
            connection.timeout = _left(deadline)
            response = connection.getresponse()
            answer = PutAnswer(response.status, response.read(MAX_ANSWER_BYTES))
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
    return answer


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
    """The deadline passed: end whatever the request is waiting for."""
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
    """The file as it is sent, refusing to go on once the deadline has passed."""

    def __init__(self, file: IO[bytes], deadline: float) -> None:
        self._file = file
        self._deadline = deadline

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            raise _DeadlinePassed()
        return self._file.read(size)
