"""The URL guard refuses non-public addresses before connecting, on every redirect hop."""

from __future__ import annotations

import socket

import pytest
import urllib3

from handler import fetch
from handler.errors import ErrorCode, JobError


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if the guard ever opens a connection."""
    opened = []

    def refuse(self, *args, **kwargs):
        opened.append(self.host)
        raise AssertionError(f"connected to {self.host}")

    monkeypatch.setattr(urllib3.HTTPConnectionPool, "urlopen", refuse)
    return opened


def _resolve_to(monkeypatch, address: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.5", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:10.0.0.1", "224.0.0.1",
])
def test_private_addresses_are_refused_without_connecting(monkeypatch, no_connections, address):
    _resolve_to(monkeypatch, address)
    with pytest.raises(JobError) as error:
        fetch.fetch_url("http://innocent-looking.example/a.jpg", "image_url", 1024, 5.0, allow_private=False)
    assert error.value.code == ErrorCode.FETCH_FAILED
    assert "non-public address" in error.value.message and "image_url" in error.value.message
    assert no_connections == []


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
