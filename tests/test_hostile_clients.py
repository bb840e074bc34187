"""Hostile clients against the always-on server (`python -m handler.http_server`) on 127.0.0.1: every
request bounded in time, memory and disk, and the next job still works."""

from __future__ import annotations

import base64
import concurrent.futures
import signal

import pytest
import requests

from tests.hostile_servers import drip_server
from tests.test_server import PORTRAIT, SAMPLE_FILES, ServerProcess

# A byte each DRIP_SECONDS, DRIP_BYTES in all: a download that is not cut runs 60 s.
DRIP_SECONDS, DRIP_BYTES = 0.1, 600


def _url_job(audio_url: str) -> dict:
    return {"input": {"audio_url": audio_url, "image_file": base64.b64encode(PORTRAIT).decode()}}


def test_a_slow_drip_url_is_cut_at_fetch_timeout_and_the_next_job_runs(tmp_path):
    server = ServerProcess({"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1", "FETCH_TIMEOUT_SECONDS": "2"},
                           tmp_path)
    try:
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
    finally:
        server.stop()
    assert server.leftovers() == []


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


def test_with_server_api_key_only_a_bearer_of_a_key_renders_and_downloads(tmp_path):
    server = ServerProcess({"MODEL_BACKEND": "lite", "SERVER_API_KEY": ",".join(API_KEYS)}, tmp_path)
    try:
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
                              headers={"Authorization": f"Bearer {API_KEYS[1]}"}, timeout=120)
        assert reply.status_code == 200, reply.text
        download = reply.json()["download_url"]
        assert requests.get(download, timeout=30).status_code == 401
        video = requests.get(download, headers={"Authorization": f"Bearer {API_KEYS[0]}"}, timeout=30)
        assert video.status_code == 200 and video.headers["Content-Type"] == "video/mp4"
    finally:
        server.stop()
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
