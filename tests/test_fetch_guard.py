"""The URL guard refuses non-public addresses before connecting, on every redirect hop; a download
ends by its deadline however slowly the server sends, and at once when its job is stopped."""

from __future__ import annotations

import socket
import threading

import pytest
import urllib3.connection

from handler import fetch
from handler.cancel import JobCancelled, JobControl
from handler.errors import ErrorCode, JobError
from tests.hostile_servers import drip_server

# A drip server sends a byte each DRIP_SECONDS, DRIP_BYTES in all: 60 s, which a download cut at
# its deadline of a second never sees the end of.
DRIP_SECONDS, DRIP_BYTES = 0.1, 600


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if the guard ever opens a connection."""
    opened = []

    def refuse(self, *args, **kwargs):
        opened.append(self.host)
        raise AssertionError(f"connected to {self.host}")

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect", refuse)
    return opened


def _resolve_to(monkeypatch, address: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.5", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:10.0.0.1", "224.0.0.1",
    # IPv6 forms that embed or translate to a private or loopback IPv4 address, and site-local
    "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::c0a8:101", "::10.0.0.1", "::127.0.0.1",
    "::ffff:0:a00:1", "2002:a00:1::1", "2002:7f00:1::", "fec0::1",
])
def test_private_addresses_are_refused_without_connecting(monkeypatch, no_connections, address):
    _resolve_to(monkeypatch, address)
    with pytest.raises(JobError) as error:
        fetch.fetch_url("http://innocent-looking.example/a.jpg", "image_url", 1024, 5.0, allow_private=False)
    assert error.value.code == ErrorCode.FETCH_FAILED
    assert "non-public address" in error.value.message and "image_url" in error.value.message
    assert no_connections == []


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_and_the_v6_forms_of_public_v4_ones_pass_the_guard(address):
    assert fetch.is_public_address(address)


@pytest.mark.parametrize("url", ["ftp://example.com/a.wav", "file:///etc/passwd", "http://", "javascript:alert(1)", "http://a:b:c/"])
def test_non_http_urls_are_invalid(no_connections, url):
    with pytest.raises(JobError) as error:
        fetch.fetch_url(url, "audio_url", 1024, 5.0, allow_private=False)
    assert error.value.code == ErrorCode.INVALID_INPUT
    assert no_connections == []


def test_redirect_to_a_private_address_is_rechecked(monkeypatch, media_server):
    """First hop allowed (the test host stands in for a public one), the redirect's target refused."""
    base, _ = media_server
    allowed = {"127.0.0.1"}
    monkeypatch.setattr(fetch, "is_public_address", lambda address: address in allowed)
    with pytest.raises(JobError) as error:
        fetch.fetch_url(f"{base}/redirect?to=http://10.9.8.7/secret", "audio_url", 1 << 20, 5.0, allow_private=False)
    assert error.value.code == ErrorCode.FETCH_FAILED and "10.9.8.7" in error.value.message


def test_size_cap_while_streaming(media_server):
    base, folder = media_server
    (folder / "big.bin").write_bytes(b"x" * 300_000)
    with pytest.raises(JobError) as error:
        fetch.fetch_url(f"{base}/big.bin", "audio_url", 100_000, 5.0, allow_private=True)
    assert error.value.code == ErrorCode.TOO_LARGE
    assert fetch.fetch_url(f"{base}/big.bin", "audio_url", 400_000, 5.0, allow_private=True) == b"x" * 300_000


def test_http_errors_name_the_field(media_server):
    base, _ = media_server
    with pytest.raises(JobError) as error:
        fetch.fetch_url(f"{base}/missing.wav", "audio_url", 1024, 5.0, allow_private=True)
    assert error.value.code == ErrorCode.FETCH_FAILED and "HTTP 404" in error.value.message


@pytest.mark.parametrize("in_headers", [False, True], ids=["body", "headers"])
def test_a_server_sending_a_byte_at_a_time_is_cut_at_the_deadline(in_headers):
    with drip_server(b"x" * DRIP_BYTES, DRIP_SECONDS, in_headers=in_headers) as server:
        with pytest.raises(JobError) as error:
            fetch.fetch_url(server.url, "audio_url", 1 << 20, 1.0, allow_private=True)
        drip = server.wait_hung_up(timeout=30)
    assert error.value.code == ErrorCode.FETCH_FAILED
    assert error.value.message == ("audio_url did not finish downloading within FETCH_TIMEOUT_SECONDS=1 s; use a "
                                   "faster host or send the file as base64.")
    # Cut by the deadline, long before the drip ran out (a byte each 0.1 s: about ten bytes in a second).
    assert 0 < drip.sent < DRIP_BYTES // 2


def test_a_stop_ends_a_slow_download_at_once():
    control = JobControl()
    with drip_server(b"x" * DRIP_BYTES, DRIP_SECONDS) as server:
        stopper = threading.Thread(target=lambda: (server.first(), control.stop("the job was cancelled")))
        stopper.start()
        with pytest.raises(JobCancelled) as stopped:
            fetch.fetch_url(server.url, "audio_url", 1 << 20, 600.0, allow_private=True, control=control)
        stopper.join()
        drip = server.wait_hung_up(timeout=30)
    assert stopped.value.reason == "the job was cancelled"
    assert drip.sent < DRIP_BYTES // 2


def test_a_job_threads_own_stop_reaches_its_download():
    """The job's stages check their control on the job's thread; a download there is stopped by it."""
    control = JobControl()
    outcome: list[BaseException] = []

    def job_thread(url: str) -> None:
        control.check()  # as a job's stage does before it starts
        try:
            fetch.fetch_url(url, "audio_url", 1 << 20, 600.0, allow_private=True)
        except BaseException as error:  # noqa: BLE001 - the test looks at what ended it
            outcome.append(error)

    with drip_server(b"x" * DRIP_BYTES, DRIP_SECONDS) as server:
        thread = threading.Thread(target=job_thread, args=(server.url,))
        thread.start()
        server.first()
        control.stop("the worker received SIGTERM and is shutting down")
        server.wait_hung_up(timeout=30)
        thread.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], JobCancelled)


def test_a_whole_download_still_arrives(media_server):
    base, folder = media_server
    (folder / "whole.bin").write_bytes(bytes(range(256)) * 4000)
    assert fetch.fetch_url(f"{base}/whole.bin", "audio_url", 1 << 20, 30.0, allow_private=True) == (
        bytes(range(256)) * 4000)
