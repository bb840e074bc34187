"""Fetch an input over http(s) without letting a job reach the worker's own network (SSRF).

Every hop (the URL and each redirect) is resolved once, every address it resolves to must be
public, and the connection is made to that checked address, so a DNS answer that changes between
the check and the connection cannot redirect us inside. The body is capped while streaming, and
the whole download ends by its deadline or the job's stop, however slowly the server sends.

The name lookup is part of that deadline: getaddrinfo cannot be interrupted and may block for as
long as the system's resolver retries, so it runs in a thread of its own (`lookup`), waited for
until the deadline or the stop; a lookup still blocked then is left to end on its own, and at most
MAX_LOOKUPS of them run at once, so a resolver that never answers costs a few threads, not one per job.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import threading
import time
import urllib.parse
from typing import Any

import certifi
import urllib3
import urllib3.connection
import urllib3.response

from handler.cancel import JobCancelled, JobControl, current_control
from handler.client_text import shown_value
from handler.errors import ErrorCode, JobError

MAX_REDIRECTS = 5
CHUNK_BYTES = 256 * 1024
USER_AGENT = "talking-head-worker/0.1"
# Name lookups that may block at once (each in a thread of its own); more wait for one to end.
MAX_LOOKUPS = 8
# The deadline of a lookup whose caller gives none.
DEFAULT_LOOKUP_SECONDS = 30.0
_lookup_slots = threading.BoundedSemaphore(MAX_LOOKUPS)


class LookupTimeout(Exception):
    """The name lookup did not end by its deadline."""


def fetch_url(
    url: str, field: str, max_bytes: int, timeout_seconds: float, allow_private: bool,
    control: JobControl | None = None,
) -> bytes:
    """Download `url` (named `field` in errors). Raises JobError on any refusal or failure.

    The whole download (every hop's connection, headers and body) ends by `timeout_seconds`
    however slowly the bytes come, and a stop of `control` (default: the calling job thread's,
    handler/cancel.py) ends it at once with JobCancelled.
    """
    control = control or current_control()
    deadline = time.monotonic() + timeout_seconds
    for _ in range(MAX_REDIRECTS + 1):
        parsed, host = _parse(url, field)
        address = _resolve_checked(parsed, host, field, allow_private, deadline, control, timeout_seconds)
        with _Wait(_connection_for(parsed, address, deadline), deadline, control) as wait:
            try:
                response = _get(wait, parsed, host, field, timeout_seconds)
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location")
                    if not location:
                        raise JobError(
                            ErrorCode.FETCH_FAILED,
                            f"{field} answered a redirect without a Location; use the final URL.",
                        )
                    url = urllib.parse.urljoin(url, location)
                    continue
                if response.status != 200:
                    raise JobError(
                        ErrorCode.FETCH_FAILED,
                        f"{field} answered HTTP {response.status}; check that the URL is public and still valid.",
                    )
                return _read_capped(response, wait, field, max_bytes, timeout_seconds)
            except JobError:
                wait.raise_if_cut(field, timeout_seconds)
                raise
    raise JobError(ErrorCode.FETCH_FAILED, f"{field} redirected more than {MAX_REDIRECTS} times; use the final URL.")


class _Wait:
    """One connection whose socket is shut down at the deadline or when the job is stopped.

    A socket timeout bounds each read, not a download: a server that sends a byte a second never
    lets one expire. Shutting the socket down from outside wakes whatever read or write waits on
    it, and the download then ends with the deadline's error or the stop's JobCancelled.
    """

    def __init__(self, connection: urllib3.connection.HTTPConnection, deadline: float,
                 control: JobControl | None) -> None:
        self.connection = connection
        self._deadline = deadline
        self._control = control
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut)
        self._timer.daemon = True
        self._stack = contextlib.ExitStack()
        self.cut = False

    def __enter__(self) -> _Wait:
        self._timer.start()
        if self._control is not None:
            self._stack.enter_context(self._control.interrupting(self._cut))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        self._stack.close()
        self.connection.close()

    def _cut(self) -> None:
        self.cut = True
        sock = self.connection.sock
        if sock is not None:
            # socket.socket's own shutdown, also for a TLS socket: it only wakes the reader, without
            # touching the TLS state another thread is using.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def raise_if_cut(self, field: str, timeout_seconds: float) -> None:
        """After the connection failed or ended: the stop's JobCancelled, or the deadline's error."""
        if self._control is not None:
            self._control.check()
        if self.cut or time.monotonic() >= self._deadline:
            raise JobError(
                ErrorCode.FETCH_FAILED,
                f"{field} did not finish downloading within FETCH_TIMEOUT_SECONDS={timeout_seconds:g} s; "
                "use a faster host or send the file as base64.",
            )

def _parse(url: str, field: str) -> tuple[urllib.parse.SplitResult, str]:
    """The URL split, and its host name (checked to be there)."""
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} is not a valid URL; send an http(s) URL.") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} must be an http:// or https:// URL with a host.")
    return parsed, parsed.hostname


# IPv6 prefixes whose last 32 bits are an IPv4 address that a gateway or the host itself reaches:
# IPv4-compatible (::/96), SIIT's IPv4-translated (::ffff:0:0:0/96), NAT64's well-known prefix
# (64:ff9b::/96) and its local-use one (64:ff9b:1::/48, RFC 8215).
EMBEDDING_IPV4 = tuple(ipaddress.ip_network(prefix) for prefix in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96",
                                                                   "64:ff9b:1::/48"))
# Deprecated site-local addresses (RFC 3879), which Python still counts as global.
SITE_LOCAL = ipaddress.ip_network("fec0::/10")


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in SITE_LOCAL:
            return False
        embedded = [ip.ipv4_mapped, ip.sixtofour]
        embedded += [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) for network in EMBEDDING_IPV4 if ip in network]
        if any(v4 is not None and not is_public_address(str(v4)) for v4 in embedded):
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    # is_global is False for loopback, private, link-local (incl. 169.254.169.254 metadata),
    # carrier-grade NAT, unspecified and reserved ranges.
    return ip.is_global and not ip.is_multicast


def _resolve_checked(
    parsed: urllib.parse.SplitResult, host: str, field: str, allow_private: bool, deadline: float,
    control: JobControl | None, timeout_seconds: float,
) -> str:
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return resolve_public(
        host, port, field, allow_private, ErrorCode.FETCH_FAILED,
        "which this worker does not fetch; use a public URL or send the file as base64.",
        deadline=deadline, control=control, deadline_name=f"FETCH_TIMEOUT_SECONDS={timeout_seconds:g} s",
    )


def resolve_public(
    hostname: str, port: int, field: str, allow_private: bool, code: ErrorCode, refusal: str,
    deadline: float | None = None, control: JobControl | None = None, deadline_name: str | None = None,
) -> str:
    """The address to connect to for `hostname`, once every address it resolves to is public.

    With `allow_private` any address is accepted. Otherwise raises JobError(code) naming `field`:
    "<field> points to a non-public address (...), <refusal>". The lookup ends by `deadline`
    (default: DEFAULT_LOOKUP_SECONDS from now; `deadline_name` names it in the error), and a stop of
    `control` ends it at once with JobCancelled.
    """
    if deadline is None:
        deadline = time.monotonic() + DEFAULT_LOOKUP_SECONDS
        deadline_name = deadline_name or f"lookup deadline of {DEFAULT_LOOKUP_SECONDS:g} s"
    try:
        infos = lookup(hostname, port, deadline, control)
    except (socket.gaierror, UnicodeError):
        raise JobError(code, f"{field}: the host {shown_value(hostname)} does not resolve; check the URL.") from None
    except LookupTimeout:
        raise JobError(code, (
            f"{field}: looking up the host {shown_value(hostname)} took longer than the "
            f"{deadline_name or 'deadline'}; check the URL, or retry when the name service answers.")) from None
    # AF_INET and AF_INET6 addresses (all a host name resolves to) start with the IP as a string
    addresses = [str(info[4][0]) for info in infos]
    if not allow_private:
        blocked = [address for address in addresses if not is_public_address(address)]
        if blocked:
            raise JobError(code, f"{field} points to a non-public address ({blocked[0]}), {refusal}")
    return addresses[0]


def lookup(hostname: str, port: int, deadline: float, control: JobControl | None = None) -> list[Any]:
    """socket.getaddrinfo(hostname, port, SOCK_STREAM) by `deadline` (else LookupTimeout), in a
    thread of its own; a stop of `control` ends the wait at once with JobCancelled."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(hostname)  # an address asks no name service: nothing to wait for
        return list(socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM))
    if not _take_slot(deadline, control):
        raise LookupTimeout()
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def resolve() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
        except Exception as error:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = error
        finally:
            _lookup_slots.release()
            done.set()

    try:
        threading.Thread(target=resolve, name="lookup", daemon=True).start()
    except BaseException:
        _lookup_slots.release()
        raise
    with contextlib.ExitStack() as stack:
        if control is not None:
            stack.enter_context(control.interrupting(done.set))
        done.wait(max(0.0, deadline - time.monotonic()))
    _raise_if_stopped(control)
    if "error" in outcome:
        raise outcome["error"]
    if "infos" not in outcome:
        raise LookupTimeout()
    return list(outcome["infos"])


def _take_slot(deadline: float, control: JobControl | None) -> bool:
    """One of the MAX_LOOKUPS slots, by `deadline`; False when none came free in time."""
    while True:
        _raise_if_stopped(control)
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if _lookup_slots.acquire(timeout=min(0.1, left)):
            return True


def _raise_if_stopped(control: JobControl | None) -> None:
    # not control.check(), which would also make `control` the calling thread's own
    if control is not None and control.reason is not None:
        raise JobCancelled(control.reason)


def _connection_for(
    parsed: urllib.parse.SplitResult, address: str, deadline: float,
) -> urllib3.connection.HTTPConnection:
    """A connection to the checked address; TLS still verifies the URL's own host name."""
    # Each connect, send and read is bounded by what is left; _Wait bounds them all together.
    timeout = max(0.1, deadline - time.monotonic())
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if parsed.scheme == "https":
        return urllib3.connection.HTTPSConnection(
            address, port, timeout=timeout, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where(),
            server_hostname=parsed.hostname, assert_hostname=parsed.hostname,
        )
    return urllib3.connection.HTTPConnection(address, port, timeout=timeout)


def _get(
    wait: _Wait, parsed: urllib.parse.SplitResult, host: str, field: str, timeout_seconds: float,
) -> urllib3.response.BaseHTTPResponse:
    host_header = host if parsed.port is None else f"{host}:{parsed.port}"
    path = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
    try:
        wait.connection.request("GET", path, headers={"Host": host_header, "User-Agent": USER_AGENT},
                                preload_content=False)
        return wait.connection.getresponse()
    except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as error:
        wait.raise_if_cut(field, timeout_seconds)
        raise JobError(
            ErrorCode.FETCH_FAILED,
            f"{field} could not be downloaded ({type(error).__name__}); check that the URL is reachable.",
        ) from None


def _read_capped(
    response: urllib3.response.BaseHTTPResponse, wait: _Wait, field: str, max_bytes: int, timeout_seconds: float,
) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(field, max_bytes)
    chunks: list[bytes] = []
    received = 0
    try:
        for chunk in response.stream(CHUNK_BYTES):
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(field, max_bytes)
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as error:
        wait.raise_if_cut(field, timeout_seconds)
        raise JobError(
            ErrorCode.FETCH_FAILED, f"{field} broke off while downloading ({type(error).__name__}); try again."
        ) from None
    # A body without a length ends when the connection does: a cut one is not the whole file.
    wait.raise_if_cut(field, timeout_seconds)
    if received == 0:
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA, f"{field} returned an empty file; check the URL.")
    return b"".join(chunks)


def _too_large(field: str, max_bytes: int) -> JobError:
    return JobError(
        ErrorCode.TOO_LARGE, f"{field} is larger than {max_bytes // (1024 * 1024)} MiB; send a smaller file."
    )
