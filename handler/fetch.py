"""Fetch an input over http(s) without letting a job reach the worker's own network (SSRF).

Every hop (the URL and each redirect) is resolved once, every address it resolves to must be
public, and the connection is made to that checked address, so a DNS answer that changes between
the check and the connection cannot redirect us inside. The body is capped while streaming.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.parse

import certifi
import urllib3

from handler.errors import ErrorCode, JobError

MAX_REDIRECTS = 5
CHUNK_BYTES = 256 * 1024
USER_AGENT = "talking-head-worker/0.1"


def fetch_url(url: str, field: str, max_bytes: int, timeout_seconds: float, allow_private: bool) -> bytes:
    """Download `url` (named `field` in errors). Raises JobError on any refusal or failure."""
    deadline = time.monotonic() + timeout_seconds
    for _ in range(MAX_REDIRECTS + 1):
        parsed, host = _parse(url, field)
        address = _resolve_checked(parsed, host, field, allow_private)
        with _pool_for(parsed, address, deadline) as pool:
            response = _get(pool, parsed, host, field)
            try:
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
                return _read_capped(response, field, max_bytes, deadline)
            finally:
                response.release_conn()
    raise JobError(ErrorCode.FETCH_FAILED, f"{field} redirected more than {MAX_REDIRECTS} times; use the final URL.")


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


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global is False for loopback, private, link-local (incl. 169.254.169.254 metadata),
    # carrier-grade NAT, unspecified and reserved ranges.
    return ip.is_global and not ip.is_multicast


def _resolve_checked(parsed: urllib.parse.SplitResult, host: str, field: str, allow_private: bool) -> str:
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return resolve_public(
        host, port, field, allow_private, ErrorCode.FETCH_FAILED,
        "which this worker does not fetch; use a public URL or send the file as base64.",
    )


def resolve_public(hostname: str, port: int, field: str, allow_private: bool, code: ErrorCode, refusal: str) -> str:
    """The address to connect to for `hostname`, once every address it resolves to is public.

    With `allow_private` any address is accepted. Otherwise raises JobError(code) naming `field`:
    "<field> points to a non-public address (...), <refusal>".
    """
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise JobError(code, f"{field}: the host {hostname!r} does not resolve; check the URL.") from None
    # AF_INET and AF_INET6 addresses (all a host name resolves to) start with the IP as a string
    addresses = [str(info[4][0]) for info in infos]
    if not allow_private:
        blocked = [address for address in addresses if not is_public_address(address)]
        if blocked:
            raise JobError(code, f"{field} points to a non-public address ({blocked[0]}), {refusal}")
    return addresses[0]


def _pool_for(parsed: urllib.parse.SplitResult, address: str, deadline: float) -> urllib3.HTTPConnectionPool:
    """A connection pool to the checked address; TLS still verifies the URL's own host name."""
    remaining = max(0.1, deadline - time.monotonic())
    timeout = urllib3.Timeout(connect=min(10.0, remaining), read=remaining)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if parsed.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address, port, timeout=timeout, retries=False, cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(), server_hostname=parsed.hostname, assert_hostname=parsed.hostname,
        )
    return urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)


def _get(
    pool: urllib3.HTTPConnectionPool, parsed: urllib.parse.SplitResult, host: str, field: str,
) -> urllib3.BaseHTTPResponse:
    host_header = host if parsed.port is None else f"{host}:{parsed.port}"
    path = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
    try:
        return pool.urlopen(
            "GET", path, headers={"Host": host_header, "User-Agent": USER_AGENT},
            redirect=False, preload_content=False,
        )
    except urllib3.exceptions.HTTPError as error:
        raise JobError(
            ErrorCode.FETCH_FAILED,
            f"{field} could not be downloaded ({type(error).__name__}); check that the URL is reachable.",
        ) from None


def _read_capped(response: urllib3.BaseHTTPResponse, field: str, max_bytes: int, deadline: float) -> bytes:
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
            if time.monotonic() > deadline:
                raise JobError(
                    ErrorCode.FETCH_FAILED,
                    f"{field} took too long to download; use a faster host or send the file as base64.",
                )
            chunks.append(chunk)
    except urllib3.exceptions.HTTPError as error:
        raise JobError(
            ErrorCode.FETCH_FAILED, f"{field} broke off while downloading ({type(error).__name__}); try again."
        ) from None
    if received == 0:
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA, f"{field} returned an empty file; check the URL.")
    return b"".join(chunks)


def _too_large(field: str, max_bytes: int) -> JobError:
    return JobError(
        ErrorCode.TOO_LARGE, f"{field} is larger than {max_bytes // (1024 * 1024)} MiB; send a smaller file."
    )
