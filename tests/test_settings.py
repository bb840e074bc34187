"""The endpoint's environment: DEFAULT_MODE is checked when the worker starts, naming the variable."""

from __future__ import annotations

import pytest

from handler.sample import sample_job_input
from handler.settings import SettingsError, WorkerSettings
from handler.startup import start_worker
from tests.conftest import WorkerProcess


@pytest.mark.parametrize("raw, mode", [("", None), ("quality", "quality"), ("fast", "fast"), (" fast ", "fast")])
def test_default_mode_values(raw, mode):
    assert WorkerSettings.from_env({"DEFAULT_MODE": raw}).default_mode == mode
    assert WorkerSettings.from_env({}).default_mode is None


@pytest.mark.parametrize("raw", ["bogus", "FAST", "quality,fast"])
def test_a_default_mode_that_is_not_a_mode_is_refused(raw):
    with pytest.raises(SettingsError, match=r"^DEFAULT_MODE=.* is not one of quality, fast\.$"):
        WorkerSettings.from_env({"DEFAULT_MODE": raw})
    worker = start_worker({"MODEL_BACKEND": "lite", "DEFAULT_MODE": raw})
    error = worker.handle({"id": "j", "input": sample_job_input()})["error"]
    expected = f"INTERNAL: the endpoint is misconfigured: DEFAULT_MODE={raw!r} is not one of quality, fast."
    assert error.startswith(expected), error


def test_the_lite_worker_takes_default_mode_quality():
    worker = start_worker({"MODEL_BACKEND": "lite", "DEFAULT_MODE": "quality"})
    assert worker.startup_error is None and worker.default_mode == "quality"
    assert start_worker({"MODEL_BACKEND": "lite"}).default_mode == "quality"


def test_default_mode_fast_on_the_lite_worker_is_refused_at_start(tmp_path):
    process = WorkerProcess({"MODEL_BACKEND": "lite", "DEFAULT_MODE": "fast"}, tmp_path)
    try:
        reply = process.runsync(sample_job_input(resolution="256*256"))
        assert reply["status"] == "FAILED", reply
        error = reply["error"]
        assert error.startswith("INTERNAL: the endpoint is misconfigured: DEFAULT_MODE='fast' is not a mode "
                                "the lite backend offers (it offers quality)"), error
        log = process.log()
        assert "the endpoint's environment is invalid: DEFAULT_MODE='fast'" in log
        assert "worker ready" not in log and f"job {reply['id']} progress" not in log
    finally:
        process.stop()


@pytest.mark.parametrize("raw", ["talk.example.com", "ftp://talk.example.com", "https://", "https://a.example/?x=1"])
def test_a_server_public_url_that_is_not_a_base_url_is_refused_at_start(raw):
    with pytest.raises(SettingsError, match=r"^SERVER_PUBLIC_URL=.* is not a base URL; set it to e\.g\. https://"):
        WorkerSettings.from_env({"SERVER_PUBLIC_URL": raw})
    assert WorkerSettings.from_env({"SERVER_PUBLIC_URL": "https://talk.example.com/base"}).server_public_url


@pytest.mark.parametrize("raw, message", [
    ("stun:stun.example.com", "is not JSON"),
    ('{"urls": "stun:a"}', "must be a list of at most 4"),
    ('[{"urls": "http://a"}]', "each server needs \"urls\""),
    ('[{"url": "stun:a"}]', "each server needs \"urls\""),
    ('[{"urls": "stun:a"}, {"urls": "stun:b"}, {"urls": "stun:c"}, {"urls": "stun:d"}, {"urls": "stun:e"}]',
     "at most 4"),
])
def test_live_ice_servers_that_cannot_be_used_are_refused_at_start_without_repeating_them(raw, message):
    with pytest.raises(SettingsError, match=message) as refused:
        WorkerSettings.from_env({"LIVE_ICE_SERVERS": raw.replace("stun:a", "stun:secret-host")})
    assert "secret-host" not in str(refused.value)


def test_live_ice_servers_are_read_as_a_browser_takes_them_and_kept_out_of_the_repr():
    settings = WorkerSettings.from_env({"LIVE_ICE_SERVERS": (
        '[{"urls": "stun:stun.example.com:3478"}, '
        '{"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "hunter2"}]')})
    assert settings.live_ice_servers == (
        {"urls": ["stun:stun.example.com:3478"]},
        {"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "hunter2"},
    )
    assert "hunter2" not in repr(settings)
    assert WorkerSettings.from_env({}).live_ice_servers == ()
