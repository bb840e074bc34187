"""A `POST /generate` request as a job: the old box's multipart form, or the contract's JSON body.

Only the envelope is translated here; the fields are the job's own and handler/schema.py judges
them, with the same sentences as on RunPod. The form's two files become the base64 the job
takes (`curl -F audio_file=@speech.wav -F image_file=@face.jpg -F prompt=...`); form values are
text, so the contract's numbers and booleans are read as such when they can be, and otherwise
handed on as sent for the schema to refuse. A JSON body is `{"input": {...}}` (RunPod's envelope,
with `s3Config` beside it) or the input object itself (the old box's).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from handler.delivery import base64_size
from handler.errors import ErrorCode, JobError
from handler.schema import SHARED_OPTIONS
from model.declaration import TRUE_WORDS

FILE_FIELDS = ("audio_file", "image_file")
# Each shared field's value type, from its declaration; a backend's own fields say theirs
# (BackendOptions.field_types).
SHARED_FIELD_TYPES: dict[str, type] = {name: declared.kind for name, declared in SHARED_OPTIONS.items()}
# A form's boolean is one of TRUE_WORDS (as the settings read them) or one of these; any other
# text is handed on as sent, for the job's validation to refuse.
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# Room beside the two media files for the other fields and the multipart framing.
ENVELOPE_BYTES = 1024 * 1024


class UnsupportedContentType(JobError):
    """A body that is neither a form nor JSON (HTTP 415)."""


class _BodyTooLarge(Exception):
    pass


def body_limit(max_input_bytes: int) -> int:
    """The largest request body: both media files at MAX_INPUT_BYTES, as base64 (the larger form)."""
    return 2 * base64_size(max_input_bytes) + ENVELOPE_BYTES


async def read_job(
    request: Request, job_id: str, max_body_bytes: int, backend_field_types: Mapping[str, type],
) -> dict[str, Any]:
    """The job a request carries, or JobError naming what is wrong with the request.

    A form's values are text: those of a field that takes a number or a boolean (a shared one, or
    one in `backend_field_types`) become one.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise _too_large(max_body_bytes)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limited = Request(request.scope, _limited(request.receive, max_body_bytes))
    try:
        if media_type == "application/json":
            return _json_job(await limited.body(), job_id)
        if media_type in FORM_TYPES:
            form = await limited.form(max_part_size=max_body_bytes)
            try:
                field_types = {**backend_field_types, **SHARED_FIELD_TYPES}
                return {"id": job_id, "input": await _form_input(form.multi_items(), field_types)}
            finally:
                await form.close()
    except _BodyTooLarge:
        raise _too_large(max_body_bytes) from None
    except MultiPartException as error:
        message = (f"the multipart form could not be read ({error}); send it as curl -F does: "
                   "-F audio_file=@speech.wav -F image_file=@face.jpg.")
        raise JobError(ErrorCode.INVALID_INPUT, message) from None
    except ClientDisconnect:
        raise JobError(ErrorCode.INVALID_INPUT, "the request body ended early; send it again.") from None
    raise UnsupportedContentType(
        ErrorCode.INVALID_INPUT,
        f"Content-Type {media_type or 'none'!r} is not accepted; send multipart/form-data (audio_file and image_file "
        "as files) or application/json (the job's input object).",
    )


def _json_job(body: bytes, job_id: str) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise JobError(ErrorCode.INVALID_INPUT, f"the request body is not valid JSON ({error}); send the job's "
                                                "input object, or {\"input\": {...}}.") from None
    if not isinstance(payload, dict):
        message = "the request body must be a JSON object: the job's input, or {\"input\": {...}}."
        raise JobError(ErrorCode.INVALID_INPUT, message)
    if "input" not in payload:
        return {"id": job_id, "input": payload}
    job = {"id": job_id, "input": payload["input"]}
    if "s3Config" in payload:
        job["s3Config"] = payload["s3Config"]
    return job


async def _form_input(items: list[tuple[str, Any]], field_types: Mapping[str, type]) -> dict[str, Any]:
    job_input: dict[str, Any] = {}
    for name, value in items:
        if name in job_input:
            raise JobError(ErrorCode.INVALID_INPUT, f"the form sends {name} twice; send it once.")
        if isinstance(value, UploadFile):
            if name not in FILE_FIELDS:
                raise JobError(ErrorCode.INVALID_INPUT, f"the form field {name} is a file, but only "
                                                        f"{' and '.join(FILE_FIELDS)} take files; send {name} as text.")
            job_input[name] = base64.b64encode(await value.read()).decode("ascii")
        elif value != "":
            job_input[name] = _typed(value, field_types.get(name, str))
    return job_input


def _typed(value: str, kind: type) -> Any:
    """A form value as the JSON value its field takes; as sent when it is not one (the job's
    validation then names the field)."""
    if kind is bool:
        word = value.strip().lower()
        return word in TRUE_WORDS if word in TRUE_WORDS | FALSE_WORDS else value
    if kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            return value
    return value


def _limited(receive: Receive, limit: int) -> Receive:
    """`receive` that stops a body (of any Content-Length, or none) once it is past `limit` bytes."""
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise _BodyTooLarge()
        return message

    return limited_receive


def _too_large(limit: int) -> JobError:
    return JobError(ErrorCode.TOO_LARGE, f"the request body is larger than {limit / 1e6:.1f} MB (two media files "
                                         "at MAX_INPUT_BYTES); send smaller files, or large ones as audio_url and "
                                         "image_url.")
