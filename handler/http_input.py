"""A `POST /generate` request as a job: the old box's multipart form, or the contract's JSON body.

Only the envelope is translated here; the fields are the job's own and handler/schema.py judges
them, with the same sentences as on RunPod. The form's files become the base64 the job takes
(`curl -F audio_file=@speech.wav -F image_file=@face.jpg -F prompt=...`; a dubbing backend's
`video_file` and a second speaker's `audio_file_2` too); form values are
text, so the contract's numbers and booleans are read as such when they can be, and otherwise
handed on as sent for the schema to refuse. A JSON body is `{"input": {...}}` (RunPod's envelope,
with `s3Config` beside it) or the input object itself (the old box's).

Whatever the body holds, reading it ends in the job or in a JobError with the contract's code
(RequestRefused adds the HTTP status where the code's own does not fit): a malformed or truncated
form, JSON that is not UTF-8 or is nested past what the parser follows, a disk that fills while a
form's file is spooled to it (TOO_LARGE, as a job's own disk that fills is: handler/scratch.py).
A body that arrives slower than its minimum rate is cut (`_guarded`). What a sentence repeats of
the client's names is escaped and cut (handler/client_text.py).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import time
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from handler.client_text import shown, shown_value
from handler.delivery import base64_size
from handler.errors import ErrorCode, JobError
from handler.schema import SHARED_OPTIONS
from model.declaration import TRUE_WORDS, InputSupport

FILE_FIELDS = ("audio_file", "image_file", "video_file", "audio_file_2")
# Each shared field's value type, from its declaration; a backend's own fields say theirs
# (BackendOptions.field_types).
SHARED_FIELD_TYPES: dict[str, type] = {name: declared.kind for name, declared in SHARED_OPTIONS.items()}
# A form's boolean is one of TRUE_WORDS (as the settings read them) or one of these; any other
# text is handed on as sent, for the job's validation to refuse.
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# Room beside the media files for the other fields and the multipart framing.
ENVELOPE_BYTES = 1024 * 1024
# A JSON job is one object of a few fields, its bulk two base64 strings, which hold none of ",[{": past
# this many of them (about a byte each, parsed into about 60 bytes each) the body is refused unparsed.
MAX_JSON_ITEMS = 100_000
# A body is cut once it has arrived slower than its minimum rate, counted from this long after its
# headers (the time a client takes to start sending) and over the time the server waited for it.
BODY_RATE_GRACE_SECONDS = 10.0
# A disk that cannot take a form's file (ENOSPC), a quota (EDQUOT) or a file size limit (EFBIG).
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class RequestRefused(JobError):
    """A request refused for its envelope, with an HTTP status of its own (`status`); `server_fault`:
    the server's own trouble (a full disk), which its operator must hear of."""

    def __init__(self, code: ErrorCode, message: str, status: int, server_fault: bool = False) -> None:
        super().__init__(code, message)
        self.status = status
        self.server_fault = server_fault


class UnsupportedContentType(RequestRefused):
    """A body that is neither a form nor JSON (HTTP 415)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(code, message, 415)


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    def __init__(self, received: int, waited: float) -> None:
        super().__init__(received, waited)
        self.received = received
        self.waited = waited


class _CheckedMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, which also tells whether the form reached its closing boundary
    (python-multipart calls `on_end` there, and nowhere else)."""

    ended = False

    def on_end(self) -> None:
        self.ended = True


# a backend that takes one portrait and one speech
PLAIN_INPUTS = InputSupport()


def body_limit(max_input_bytes: int, inputs: InputSupport = PLAIN_INPUTS, max_video_bytes: int = 0) -> int:
    """The largest request body: each media file the backend takes at its cap, as base64 (the larger
    form): a speech per speaker, and a portrait or, where it dubs, a video of up to MAX_VIDEO_BYTES."""
    portrait = max(max_input_bytes, max_video_bytes if inputs.video else 0)
    return inputs.speakers * base64_size(max_input_bytes) + base64_size(portrait) + ENVELOPE_BYTES


async def read_job(
    request: Request, job_id: str, max_body_bytes: int, backend_field_types: Mapping[str, type],
    min_bytes_per_second: float = 0.0,
) -> dict[str, Any]:
    """The job a request carries, or JobError naming what is wrong with the request.

    A form's values are text: those of a field that takes a number or a boolean (a shared one, or
    one in `backend_field_types`) become one. A body that has arrived at fewer than
    `min_bytes_per_second` on average, BODY_RATE_GRACE_SECONDS after it began, is cut (0: never).
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise _too_large(max_body_bytes)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    guarded = Request(request.scope, _guarded(request.receive, max_body_bytes, min_bytes_per_second))
    try:
        if media_type == "application/json":
            return _json_job(await guarded.body(), job_id)
        if media_type in FORM_TYPES:
            form = await _read_form(guarded, media_type, max_body_bytes)
            try:
                field_types = {**backend_field_types, **SHARED_FIELD_TYPES}
                return {"id": job_id, "input": await _form_input(form.multi_items(), field_types)}
            finally:
                await form.close()
    except _BodyTooLarge:
        raise _too_large(max_body_bytes) from None
    except _BodyTooSlow as slow:
        message = (f"the request body arrived too slowly: {slow.received} bytes in {slow.waited:.0f} s, where the "
                   f"server takes at least SERVER_MIN_BODY_BYTES_PER_SECOND={min_bytes_per_second:g} bytes a second "
                   f"after the first {BODY_RATE_GRACE_SECONDS:g} s; send it over a faster connection, or the media as "
                   "audio_url and image_url.")
        raise RequestRefused(ErrorCode.INVALID_INPUT, message, 408) from None
    except MultiPartException as error:
        message = (f"the multipart form could not be read ({shown(error.message)}); send it as curl -F does: "
                   "-F audio_file=@speech.wav -F image_file=@face.jpg.")
        raise JobError(ErrorCode.INVALID_INPUT, message) from None
    except ClientDisconnect:
        raise JobError(ErrorCode.INVALID_INPUT, "the request body ended early; send it again.") from None
    raise UnsupportedContentType(
        ErrorCode.INVALID_INPUT,
        f"Content-Type {shown_value(media_type) if media_type else 'none'} is not accepted; send multipart/form-data "
        "(audio_file and image_file as files) or application/json (the job's input object).",
    )


async def _read_form(request: Request, media_type: str, max_part_bytes: int) -> FormData:
    """The form, with Starlette's parsers (not `Request.form`, which turns their errors into the
    framework's own answer); a multipart form must reach its closing boundary."""
    if media_type == "application/x-www-form-urlencoded":
        return await FormParser(request.headers, request.stream()).parse()
    parser = _CheckedMultiPartParser(request.headers, request.stream(), max_part_size=max_part_bytes)
    try:
        form = await parser.parse()
    except OSError as error:  # a file part past Starlette's in-memory spool, on a disk that cannot take it
        raise _not_stored(error) from None
    if not parser.ended:
        await form.close()
        raise MultiPartException("the body ended before the form's closing boundary")
    return form


def _json_job(body: bytes, job_id: str) -> dict[str, Any]:
    items = body.count(b",") + body.count(b"[") + body.count(b"{")
    if items > MAX_JSON_ITEMS:
        message = (f"the request body holds {items} JSON items (commas and brackets), more than the "
                   f"{MAX_JSON_ITEMS} a job may have; send the job's input object: a few fields, the media as "
                   "base64 strings.")
        raise JobError(ErrorCode.INVALID_INPUT, message)
    try:
        payload = json.loads(body)
    except UnicodeDecodeError as error:
        message = (f"the request body is not UTF-8 (byte {error.start} is not valid there); send the JSON "
                   "encoded as UTF-8.")
        raise JobError(ErrorCode.INVALID_INPUT, message) from None
    except RecursionError:
        message = ("the request body is nested too deeply to read; send the job's input object, or "
                   "{\"input\": {...}}: its fields are strings, numbers and booleans.")
        raise JobError(ErrorCode.INVALID_INPUT, message) from None
    except ValueError as error:
        raise JobError(ErrorCode.INVALID_INPUT, f"the request body is not valid JSON ({shown(error)}); send the "
                                                "job's input object, or {\"input\": {...}}.") from None
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
            raise JobError(ErrorCode.INVALID_INPUT, f"the form sends {shown(name)} twice; send it once.")
        if isinstance(value, UploadFile):
            if name not in FILE_FIELDS:
                raise JobError(ErrorCode.INVALID_INPUT,
                               f"the form field {shown(name)} is a file, but only {', '.join(FILE_FIELDS)} take "
                               f"files; send {shown(name)} as text.")
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


def _guarded(receive: Receive, limit: int, min_bytes_per_second: float) -> Receive:
    """`receive` that stops a body (of any Content-Length, or none) once it is past `limit` bytes,
    or once it has arrived slower than `min_bytes_per_second` (0: no minimum).

    The rate is counted over the time spent waiting for the client, not the server's own time
    between reads (spooling a file, a busy event loop): BODY_RATE_GRACE_SECONDS, plus a second for
    each `min_bytes_per_second` bytes received, is what the client may keep the server waiting.
    The wait is cut at that deadline, not when the next bytes come: a trickle of a byte a second
    lasts the grace, however long its Content-Length.
    """
    received, waited = 0, 0.0

    async def guarded_receive() -> Message:
        nonlocal received, waited
        started = time.monotonic()
        try:
            if min_bytes_per_second <= 0:
                message = await receive()
            else:
                allowed = BODY_RATE_GRACE_SECONDS + received / min_bytes_per_second - waited
                if allowed <= 0:
                    raise _BodyTooSlow(received, waited)
                try:
                    message = await asyncio.wait_for(receive(), allowed)
                except TimeoutError:
                    raise _BodyTooSlow(received, waited + allowed) from None
        finally:
            waited += time.monotonic() - started
        received += len(message.get("body", b""))
        if received > limit:
            raise _BodyTooLarge()
        return message

    return guarded_receive


def _not_stored(error: OSError) -> RequestRefused:
    """The server could not spool a form's file: its disk is full (TOO_LARGE, 413), or another fault
    of its own (INTERNAL, 500)."""
    reason = shown(error.strerror or type(error).__name__)
    name = errno.errorcode.get(error.errno or 0, "")
    if error.errno in FULL_DISK_ERRNOS:
        message = (f"the request body does not fit on the server's disk, which is full ({name}: {reason}); send "
                   "smaller files, or try again later.")
        return RequestRefused(ErrorCode.TOO_LARGE, message, 413, server_fault=True)
    message = f"the server could not store the request body ({name or 'error'}: {reason}); try again later."
    return RequestRefused(ErrorCode.INTERNAL, message, 500, server_fault=True)


def _too_large(limit: int) -> JobError:
    return JobError(ErrorCode.TOO_LARGE, f"the request body is larger than {limit / 1e6:.1f} MB (each media file "
                                         "at its cap: MAX_INPUT_BYTES, MAX_VIDEO_BYTES for a video); send smaller "
                                         "files, or large ones as audio_url, image_url or video_url.")
