"""The model's exceptions as the contract's codes (handler/errors.py, MODEL_ERROR_CODES): each
type to its code, in a job the worker runs as in the table itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from handler.errors import (
    FRESH_WORKER_CODES,
    MODEL_ERROR_CODES,
    ErrorCode,
    JobError,
    contract_error,
    from_model_error,
)
from handler.job import Worker
from handler.sample import sample_job_input
from handler.settings import WorkerSettings
from model.base import (
    BackendOutOfMemoryError,
    GenerationOptions,
    HostUnfitError,
    InvalidOptionError,
    ModelUnavailableError,
    NoFaceError,
    PreparedPortrait,
    ProgressCallback,
    Speech,
)
from model.lite.backend import LiteBackend
from model.live import LiveUnsupportedError

MODEL_ERRORS = [
    (InvalidOptionError("guidance_scale", "guidance_scale has no meaning in mode 'fast'."), ErrorCode.INVALID_INPUT),
    (NoFaceError("No face was found in the portrait; send a photo of a face."), ErrorCode.NO_FACE),
    (ModelUnavailableError("the weights were not found (looked at /models)."), ErrorCode.MODEL_UNAVAILABLE),
    (HostUnfitError("no CUDA device on this machine."), ErrorCode.MODEL_UNAVAILABLE),
    (BackendOutOfMemoryError("out of GPU memory in memory mode 'fp8'; set WAN_MEMORY_MODE=offload."),
     ErrorCode.OUT_OF_MEMORY),
    (LiveUnsupportedError("wan-s2v cannot render live sessions: it renders finished recordings only."),
     ErrorCode.LIVE_UNSUPPORTED),
]


@pytest.mark.parametrize("error, code", MODEL_ERRORS)
def test_each_model_exception_has_its_contract_code(error, code):
    translated = contract_error(error)
    assert translated is not None and translated.code is code and translated.message == str(error)


def test_the_table_covers_every_exception_of_the_model_interface():
    assert set(MODEL_ERROR_CODES) == {InvalidOptionError, NoFaceError, ModelUnavailableError, BackendOutOfMemoryError,
                                      LiveUnsupportedError}


def test_a_job_error_is_itself_and_anything_else_is_a_crash():
    error = JobError(ErrorCode.FETCH_FAILED, "audio_url could not be fetched.")
    assert contract_error(error) is error
    assert contract_error(RuntimeError("boom")) is None
    with pytest.raises(TypeError):
        from_model_error(RuntimeError("boom"))


def test_a_subject_goes_in_front_and_an_option_refusal_names_its_field():
    assert str(from_model_error(NoFaceError("No face."), "image_url")) == "NO_FACE: image_url: No face."
    unnamed = InvalidOptionError("seed", "must be smaller.")
    assert str(contract_error(unnamed)) == "INVALID_INPUT: seed: must be smaller."
    named = InvalidOptionError("seed", "seed must be smaller.")
    assert str(contract_error(named)) == "INVALID_INPUT: seed must be smaller."


class _FailingBackend(LiteBackend):
    """lite, whose generation raises the given model exception."""

    error: Exception

    def generate(
        self, portrait: PreparedPortrait, speech: Speech, options: GenerationOptions, on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        raise self.error
        yield  # a generator, like the real one


@pytest.fixture(scope="module")
def failing_backend() -> _FailingBackend:
    return _FailingBackend()


@pytest.mark.parametrize("error, code", MODEL_ERRORS)
def test_a_job_fails_with_the_tables_code_and_only_out_of_memory_asks_for_a_fresh_worker(failing_backend, error, code):
    failing_backend.error = error
    worker = Worker(settings=WorkerSettings.from_env({}), backend=failing_backend, presets=None)
    result: dict[str, Any] = worker.handle({"id": "table", "input": sample_job_input(resolution="64*64")})
    assert result["error"].startswith(f"{code.value}: "), result
    assert result.get("refresh_worker", False) is (code in FRESH_WORKER_CODES)
    assert FRESH_WORKER_CODES == {ErrorCode.OUT_OF_MEMORY}
