"""The contract's error codes, and the one exception every stage raises to fail a job."""

from __future__ import annotations

import enum


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


class JobError(Exception):
    """A job failure the user can act on: a code and one sentence naming the field and the fix."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"
