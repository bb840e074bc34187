"""The job field `mode`: checked against the contract, then by the backend, before any media work."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handler.job import Worker
from handler.sample import sample_job_input
from handler.settings import WorkerSettings
from model.base import (
    BackendOptions,
    GenerationOptions,
    InvalidOptionError,
    PreparedPortrait,
    ProgressCallback,
    Speech,
    TalkingHeadBackend,
    num_frames_for,
)
from model.lite.declaration import DECLARATION as LITE_DECLARATION
from model.options import option, reject_unknown
from tests.conftest import ASSETS

WAV_B64 = base64.b64encode((ASSETS / "speech.wav").read_bytes()).decode()
JPEG_B64 = base64.b64encode((ASSETS / "portrait.jpg").read_bytes()).decode()
# Nothing listens on the discard port: fetching from it would fail with FETCH_FAILED.
UNREACHABLE_AUDIO = "http://127.0.0.1:9/speech.wav"
FAST_MODE_REFUSES = ("guidance_scale", "sample_solver", "sample_shift", "negative_prompt")


# --- over RunPod's local HTTP API, the lite worker (it offers only "quality") ---------------------

def test_fast_mode_on_lite_is_refused_before_any_media_work(plain_worker):
    job = {"audio_url": UNREACHABLE_AUDIO, "image_file": JPEG_B64}
    control = plain_worker.runsync(job)
    assert control["error"].startswith("FETCH_FAILED: audio_url"), control

    reply = plain_worker.runsync({**job, "mode": "fast"})
    assert reply["status"] == "FAILED", reply
    error = reply["error"]
    assert error.startswith("INVALID_INPUT: mode "), error
    assert "quality" in error and "'fast'" in error, error
    assert f"job {reply['id']} progress" not in plain_worker.log(), "no stage (decode, fetch) began"


@pytest.mark.parametrize("value", ["turbo", "", "Quality", 1, True, ["fast"], {"mode": "fast"}])
def test_a_mode_that_is_not_a_mode(plain_worker, value):
    reply = plain_worker.runsync({"audio_url": UNREACHABLE_AUDIO, "image_file": JPEG_B64, "mode": value})
    assert reply["status"] == "FAILED", reply
    assert reply["error"].startswith("INVALID_INPUT: mode must be one of quality, fast, not "), reply


@pytest.mark.parametrize("job_mode", [None, "quality"])
def test_a_good_job_reports_its_mode(plain_worker, job_mode):
    extra = {} if job_mode is None else {"mode": job_mode}
    reply = plain_worker.runsync(sample_job_input(resolution="128*128", **extra))
    assert reply["status"] == "COMPLETED", reply
    assert reply["output"]["mode"] == "quality"


# --- in process, a backend that offers both modes ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TwoModeOptions(BackendOptions):
    """Fields of a diffusion backend; in fast mode, those the 4-step sampler has no use for are refused."""

    guidance_scale: float | None = option(float, "guidance", low=0, high=30)
    sample_solver: str | None = option(str, "the sampler")
    sample_shift: float | None = option(float, "the shift", low=0, high=20)
    negative_prompt: str | None = option(str, "the negative prompt")

    # its own sentences, some without the field's name: the worker's side of the refusal is tested
    @classmethod
    def parse(cls, fields: Mapping[str, Any], mode: str, backend: str) -> TwoModeOptions:
        reject_unknown(fields, cls, backend)
        for field in FAST_MODE_REFUSES:
            if mode == "fast" and fields.get(field) is not None:
                # one message names its field, the others leave that to the worker
                message = "has no meaning in fast mode"
                if field == "guidance_scale":
                    message = f"{field} {message}"
                raise InvalidOptionError(field, message + '; leave it out, or send mode "quality".')
        return cls(**fields)


class TwoModeBackend(TalkingHeadBackend):
    """Offers quality and fast, with TwoModeOptions."""

    declaration = dataclasses.replace(
        LITE_DECLARATION, name="two-mode", backend_class="tests.test_mode:TwoModeBackend",
        options_class="tests.test_mode:TwoModeOptions",
        modes=("quality", "fast"), frame_batches={"quality": (25, 25), "fast": (25, 25)},
        deploy=dataclasses.replace(LITE_DECLARATION.deploy, speeds={
            "quality": LITE_DECLARATION.deploy.speeds["quality"], "fast": LITE_DECLARATION.deploy.speeds["quality"]}),
    )
    name = "two-mode"
    fps = 25.0

    def __init__(self, events: list[str]) -> None:
        self.events = events

    @classmethod
    def load(cls, model_dir: Path, settings: Mapping[str, Any]) -> TwoModeBackend:
        return cls([])

    def parse_options(self, fields: Mapping[str, Any], mode: str) -> BackendOptions:
        self.events.append(f"parse_options:{mode}")
        return super().parse_options(fields, mode)

    def prepare_portrait(self, image: np.ndarray, max_area: int) -> PreparedPortrait:
        self.events.append("prepare_portrait")
        return PreparedPortrait(width=64, height=64, features=None)

    def generate(
        self, portrait: PreparedPortrait, speech: Speech, options: GenerationOptions, on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        self.events.append(f"generate:{options.mode}")
        total = num_frames_for(speech.duration_seconds, self.fps)
        on_progress(1.0, "done")
        yield np.zeros((total, portrait.height, portrait.width, 3), np.uint8)


@pytest.fixture
def events(monkeypatch) -> list[str]:
    """What happened, in order: every fetch and decode the worker starts (they still run), and
    every call of the backend that records into this list too."""
    import handler.job

    calls: list[str] = []
    for name in ("fetch_url", "decode_base64", "decode_audio", "decode_image"):
        real = getattr(handler.job, name)

        def recording(*args, _name=name, _real=real, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(handler.job, name, recording)
    return calls


def _worker(backend: TalkingHeadBackend, **env: str) -> Worker:
    return Worker(settings=WorkerSettings.from_env({"ALLOW_PRIVATE_URLS": "1", **env}), backend=backend, presets=None)


@pytest.mark.parametrize("field, value", [("guidance_scale", 3.0), ("sample_solver", "dpm++"),
                                          ("sample_shift", 5.0), ("negative_prompt", "blur")])
def test_parse_options_runs_before_media_and_its_refusal_is_invalid_input(events, field, value):
    job = {"id": "fast-1",
           "input": {"mode": "fast", field: value, "audio_file": WAV_B64, "image_url": UNREACHABLE_AUDIO}}
    error = _worker(TwoModeBackend(events)).handle(job)["error"]
    assert error.startswith("INVALID_INPUT: "), error
    assert error.count(field) == 1 and "fast mode" in error, error
    assert events == ["parse_options:fast"], "nothing was fetched, decoded or prepared"


def test_default_mode_reaches_the_backend_and_the_result(events):
    worker = _worker(TwoModeBackend(events), DEFAULT_MODE="fast")
    result = worker.handle({"id": "fast-2", "input": sample_job_input()})
    assert result.get("success") is True, result
    assert result["mode"] == "fast"
    assert events[0] == "parse_options:fast"
    assert events.index("decode_audio") < events.index("prepare_portrait") < events.index("generate:fast")

    events.clear()
    result = worker.handle({"id": "quality-1", "input": sample_job_input(mode="quality", guidance_scale=3.0)})
    assert result.get("success") is True and result["mode"] == "quality", result
    assert events[0] == "parse_options:quality" and events[-1] == "generate:quality", events


def test_a_backend_declares_its_field_types_and_the_server_reads_forms_by_them():
    """The always-on server's form values are text: a backend's own numeric fields come from its
    options class, not from a list of Wan's field names in the server."""
    from handler.http_input import SHARED_FIELD_TYPES, _form_input
    from model.wan_s2v.options import WanS2VOptions

    assert WanS2VOptions.field_types() == {"negative_prompt": str, "num_inference_steps": int,
                                           "guidance_scale": float, "sample_solver": str, "sample_shift": float}
    form = [("num_inference_steps", "4"), ("guidance_scale", "3.5"), ("seed", "7"), ("stream", "yes"),
            ("prompt", "12"), ("sample_shift", "three")]
    job = asyncio.run(_form_input(form, {**WanS2VOptions.field_types(), **SHARED_FIELD_TYPES}))
    assert job == {"num_inference_steps": 4, "guidance_scale": 3.5, "seed": 7, "stream": True, "prompt": "12",
                   "sample_shift": "three"}, "a value that is not a number is left for the options to refuse"
