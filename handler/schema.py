"""Validate and normalise a job's input (docs/CONTRACT.md, "Job input"); the contract's defaults live here.

Accepted input, all fields of `job["input"]`:

    audio_file | audio_url          exactly one: base64 (plain or data URI) | http(s) URL
    image_file | image_url | avatar_id
                                    exactly one: base64 | http(s) URL | preset portrait id
    prompt                          str, default "A person speaking"
    resolution                      "W*H" pixel-area budget, default: the backend's for the mode
                                    ("832*480"; Wan2.2-S2V's mode "fast": "704*384")
    seed                            int >= 0, default random (reported back)
    mode                            "quality" | "fast", default env DEFAULT_MODE, else the
                                    backend's first mode ("quality")
    stream                          bool, default false: the video also leaves in segments while it
                                    renders (handler/streaming.py), through /stream/{id} on an endpoint
                                    with STREAM_RESULTS=1, and as a playlist in the bucket when one is set
    output_type                     "auto" | "base64" | "s3", default "auto"
    max_duration_seconds            float, default env MAX_AUDIO_SECONDS (never above it)

Every other field is the backend's (`backend_fields`): its options class (model/options.py; for
Wan2.2-S2V negative_prompt, num_inference_steps, guidance_scale, sample_solver, sample_shift)
takes them, refusing a field it does not take or that has no meaning in the job's mode, and a
mode it does not offer (TalkingHeadBackend.parse_options), before any media work.

RunPod's per-request `s3Config` sits beside `input` on the job, not inside it: accessId,
accessSecret, bucketName and optionally endpointUrl (any form handler/bucket.py accepts).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Mapping
from typing import Any, TypeVar

from handler.bucket import JOB_FIELDS, BucketAddressError, BucketSettings, make_bucket
from handler.errors import ErrorCode, JobError
from model.base import DEFAULT_PROMPT
from model.options import json_type

# The fields every backend shares; the rest of a job's fields are its backend's own.
SHARED_FIELDS = frozenset({
    "audio_file", "audio_url", "image_file", "image_url", "avatar_id", "prompt", "resolution", "seed", "mode",
    "stream", "output_type", "max_duration_seconds",
})
OUTPUT_TYPES = ("auto", "base64", "s3")
#: every generation mode the contract knows; which of them an endpoint offers is its backend's `modes`
MODES = ("quality", "fast")
MAX_SEED = 2**63 - 1
MAX_SIDE = 4096
AVATAR_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RESOLUTION_PATTERN = re.compile(r"^\s*(\d+)\s*[*xX×]\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class MediaSource:
    """Where one input comes from: `kind` is "base64", "url" or "preset"; `field` is the job field."""

    field: str
    kind: str
    value: str


@dataclasses.dataclass(frozen=True)
class JobRequest:
    audio: MediaSource
    image: MediaSource
    prompt: str
    #: the pixel-area budget of `resolution`; None: the backend's default for the job's mode
    max_area: int | None
    seed: int
    mode: str
    #: every other field of the job, for the backend's own options class to take or refuse
    backend_fields: dict[str, Any]
    output_type: str
    max_duration_seconds: float
    #: send the video in segments while it renders (docs/CONTRACT.md, "Streaming")
    stream: bool
    #: the job's own bucket (RunPod's s3Config), which overrides the endpoint's
    s3_override: BucketSettings | None


def invalid(message: str) -> JobError:
    return JobError(ErrorCode.INVALID_INPUT, message)


def parse_job(job: Mapping[str, Any], max_audio_seconds: float, default_mode: str = MODES[0]) -> JobRequest:
    """Turn a RunPod job into a JobRequest, or raise JobError(INVALID_INPUT) naming the field.

    `default_mode` is the endpoint's mode for a job that names none.
    """
    raw = job.get("input")
    if not isinstance(raw, dict):
        raise invalid(
            '"input" must be a JSON object with audio_file (or audio_url) and image_file (or image_url, avatar_id).'
        )
    audio = _one_source(raw, "audio", {"audio_file": "base64", "audio_url": "url"})
    image = _one_source(raw, "image", {"image_file": "base64", "image_url": "url", "avatar_id": "preset"})
    if image.kind == "preset" and not AVATAR_ID_PATTERN.match(image.value):
        raise invalid("avatar_id may contain only letters, digits, '.', '_' and '-'; use the id of a preset avatar.")
    return JobRequest(
        audio=audio,
        image=image,
        prompt=_text(raw, "prompt", DEFAULT_PROMPT),
        max_area=None if raw.get("resolution") is None else parse_resolution_area(raw["resolution"]),
        seed=_seed(raw.get("seed")),
        mode=_mode(raw.get("mode"), default_mode),
        backend_fields={name: value for name, value in raw.items() if name not in SHARED_FIELDS},
        output_type=_output_type(raw.get("output_type", "auto")),
        max_duration_seconds=_max_duration(raw.get("max_duration_seconds"), max_audio_seconds),
        stream=_stream(raw.get("stream", False)),
        s3_override=_s3_override(job.get("s3Config")),
    )


def _one_source(raw: Mapping[str, Any], what: str, fields: Mapping[str, str]) -> MediaSource:
    present = [name for name in fields if raw.get(name) not in (None, "")]
    names = ", ".join(fields)
    if not present:
        raise invalid(f"no {what} given: send exactly one of {names}.")
    if len(present) > 1:
        raise invalid(f"{' and '.join(present)} were both given: send exactly one of {names}.")
    field = present[0]
    value = raw[field]
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string, not {json_type(value)}.")
    return MediaSource(field=field, kind=fields[field], value=value.strip())


_TextDefault = TypeVar("_TextDefault", str, None)


def _text(raw: Mapping[str, Any], field: str, default: _TextDefault) -> str | _TextDefault:
    value = raw.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string, not {json_type(value)}.")
    if len(value) > 2000:
        raise invalid(f"{field} is {len(value)} characters long; keep it under 2000.")
    return value


def parse_resolution_area(value: Any) -> int:
    """The pixel-area budget of a "W*H" resolution string."""
    match = RESOLUTION_PATTERN.match(value) if isinstance(value, str) else None
    if not match:
        raise invalid(f'resolution must be a string like "832*480" (width*height), not {value!r}.')
    width, height = int(match.group(1)), int(match.group(2))
    if not (64 <= width <= MAX_SIDE and 64 <= height <= MAX_SIDE):
        raise invalid(f"resolution {value!r} is out of range: each side must be between 64 and {MAX_SIDE}.")
    return width * height


def _seed(value: Any) -> int:
    if value is None:
        return secrets.randbelow(2**31)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise invalid(f"seed must be a whole number from 0 to {MAX_SEED}, not {value!r}.")
    return value


def _output_type(value: Any) -> str:
    if value not in OUTPUT_TYPES:
        raise invalid(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, not {value!r}.")
    return value


def _stream(value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"stream must be true or false, not {value!r}.")
    return value


def _mode(value: Any, default: str) -> str:
    if value is None:
        return default
    if value not in MODES:
        raise invalid(f"mode must be one of {', '.join(MODES)}, not {value!r}.")
    return value


def _max_duration(value: Any, worker_limit: float) -> float:
    if value is None:
        return worker_limit
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise invalid(f"max_duration_seconds must be a positive number of seconds, not {value!r}.")
    # A client may lower the worker's cap, never raise it.
    return min(float(value), worker_limit)


def _s3_override(value: Any) -> BucketSettings | None:
    if value is None:
        return None
    keys = ("accessId", "accessSecret", "bucketName")
    if not isinstance(value, dict) or any(not isinstance(value.get(key), str) or not value.get(key) for key in keys):
        raise invalid(
            "s3Config must be an object with accessId, accessSecret, bucketName (and optionally endpointUrl) strings."
        )
    endpoint = value.get("endpointUrl")
    if endpoint is not None and not isinstance(endpoint, str):
        raise invalid("s3Config.endpointUrl must be a string URL.")
    try:
        return make_bucket(endpoint or None, value["bucketName"], value["accessId"], value["accessSecret"], JOB_FIELDS)
    except BucketAddressError as error:
        raise invalid(str(error)) from None
