"""The contract's error codes, the one exception every stage raises to fail a job, and the model's
exceptions as those codes (MODEL_ERROR_CODES, the one table of them)."""

from __future__ import annotations

import enum

from model.base import BackendOutOfMemoryError, InvalidOptionError, ModelUnavailableError, NoFaceError
from model.live import LiveUnsupportedError


class ErrorCode(enum.StrEnum):
    INVALID_INPUT = "INVALID_INPUT"
    UNSUPPORTED_MEDIA = "UNSUPPORTED_MEDIA"
    TOO_LARGE = "TOO_LARGE"
    NO_FACE = "NO_FACE"
    FETCH_FAILED = "FETCH_FAILED"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    UPLOAD_FAILED = "UPLOAD_FAILED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    INTERNAL = "INTERNAL"
    # live sessions: the backend renders finished recordings only; the worker holds all the sessions it may
    LIVE_UNSUPPORTED = "LIVE_UNSUPPORTED"
    SESSION_LIMIT = "SESSION_LIMIT"


class JobError(Exception):
    """A job failure the user can act on: a code and one sentence naming the field and the fix."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


#: The exceptions of the model interface (model/base.py), as the contract's codes. A subclass
#: takes its base's row (HostUnfitError is MODEL_UNAVAILABLE).
MODEL_ERROR_CODES: dict[type[Exception], ErrorCode] = {
    InvalidOptionError: ErrorCode.INVALID_INPUT,
    NoFaceError: ErrorCode.NO_FACE,
    ModelUnavailableError: ErrorCode.MODEL_UNAVAILABLE,
    BackendOutOfMemoryError: ErrorCode.OUT_OF_MEMORY,
    LiveUnsupportedError: ErrorCode.LIVE_UNSUPPORTED,
}

#: A job that fails with one of these asks RunPod for a fresh worker: the allocator of a process
#: that ran out of GPU memory can stay too fragmented for the next job.
FRESH_WORKER_CODES = frozenset({ErrorCode.OUT_OF_MEMORY})


def contract_error(error: Exception) -> JobError | None:
    """`error` as the contract's JobError: itself, or a model exception by MODEL_ERROR_CODES; None
    for anything else (a crash)."""
    if isinstance(error, JobError):
        return error
    if isinstance(error, tuple(MODEL_ERROR_CODES)):
        return from_model_error(error)
    return None


def from_model_error(error: Exception, subject: str = "") -> JobError:
    """A model exception (one of MODEL_ERROR_CODES) as its JobError. `subject` ("image_file") names
    what it is about, in front of its sentence; an InvalidOptionError whose sentence does not name
    its field gets the field there."""
    code = next((code for kind, code in MODEL_ERROR_CODES.items() if isinstance(error, kind)), None)
    if code is None:
        raise TypeError(f"{type(error).__name__} is not one of the model's exceptions (MODEL_ERROR_CODES)")
    message = str(error)
    if not subject and isinstance(error, InvalidOptionError) and error.field not in message:
        subject = error.field
    return JobError(code, f"{subject}: {message}" if subject else message)
