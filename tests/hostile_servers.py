"""Hostile servers on 127.0.0.1 for the tests: a media host that sends its answer a byte at a time."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Drip:
    """What one connection to the drip server saw."""

    #: bytes of the answer sent before the client hung up or the drip ran out
    sent: int = 0
    #: the client closed the connection before the whole answer was sent
    hung_up: bool = False
    #: time.monotonic() when the client hung up
    hung_up_at: float | None = None
    #: time.monotonic() when the request's headers had arrived
    asked_at: float | None = None


@dataclass
class DripServer:
    """Answers every GET with `answer`, one byte each `interval` seconds.

    `in_headers`: the drip starts in the status line and headers; otherwise they come at once
    (with a Content-Length of the whole body) and the body drips. Bounded: an answer has at most
    `len(body)` bytes, so a test that fails to cut it ends when the drip runs out.
    """

    url: str
    connections: list[Drip] = field(default_factory=list)

    def first(self, timeout: float = 30.0) -> Drip:
        """The first connection, once it has asked (waits at most `timeout`)."""
        deadline = time.monotonic() + timeout
        while not self.connections or self.connections[0].asked_at is None:
            assert time.monotonic() < deadline, "no request reached the drip server"
            time.sleep(0.02)
        return self.connections[0]

    def wait_hung_up(self, timeout: float) -> Drip:
        """The first connection once its client hung up; fails after `timeout` seconds."""
        drip = self.first(timeout)
        deadline = time.monotonic() + timeout
        while not drip.hung_up:
            assert time.monotonic() < deadline, f"the client was still downloading after {timeout} s: {drip}"
            time.sleep(0.02)
        return drip


@contextlib.contextmanager
def drip_server(body: bytes, interval: float, in_headers: bool = False) -> Iterator[DripServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    server = DripServer(f"http://127.0.0.1:{listener.getsockname()[1]}/speech.wav")
    stopping = threading.Event()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    def serve(conn: socket.socket, drip: Drip) -> None:
        with conn:
            request = b""
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
            drip.asked_at = time.monotonic()
            answer = head + body
            if not in_headers:
                conn.sendall(head)
                answer = body
            for byte in answer:
                if stopping.is_set():
                    return
                readable, _, _ = select.select([conn], [], [], interval)
                try:
                    if readable and not conn.recv(1):
                        raise ConnectionResetError
                    conn.sendall(bytes([byte]))
                except OSError:
                    drip.hung_up, drip.hung_up_at = True, time.monotonic()
                    return
                drip.sent += 1

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            drip = Drip()
            server.connections.append(drip)
            threading.Thread(target=serve, args=(conn, drip), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()
