"""Validate and normalise a job's input (docs/CONTRACT.md, "Job input"): the shared fields, declared here.

`SHARED_OPTIONS` declares the fields every backend shares (model/options.py's Option: type, bounds,
choices, default, description); the simple ones are validated from their declarations, the
structured ones (exactly one audio and one image source, a video to dub counting as the image, at
most one second speech and only beside a first, `speaker_timing` only with a second speech,
`resolution`'s "W*H", the worker's cap on `max_duration_seconds`) by the rules below. Whether the
endpoint's backend takes a video or a second speech (its declaration's `inputs`) is judged by
`check_backend_inputs`, which the worker calls as soon as it knows the backend, before any media
work. A default the declaration leaves as None is decided here or by the worker: a random seed,
the endpoint's DEFAULT_MODE, the backend's resolution for the mode, the endpoint's MAX_AUDIO_SECONDS.

Every other field is the backend's (`backend_fields`): its options class (model/options.py)
takes them, refusing a field it does not take or that has no meaning in the job's mode, and a
mode it does not offer (TalkingHeadBackend.parse_options), before any media work.

RunPod's per-request `s3Config` sits beside `input` on the job, not inside it: accessId,
accessSecret, bucketName and optionally endpointUrl (any form handler/bucket.py accepts).

No sentence, here or in a backend's options, repeats a client's text unbounded. Before any field
is judged, the input is screened (`_screen_fields`): a field's name must be letters, digits and
`_` (at most 64), and a backend's field (whose options repeat a refused value as repr writes it)
must not be a list or an object, text longer than MAX_TEXT_LENGTH or a whole number past 64 bits.
What a sentence here repeats of a refused name or value is escaped and cut, and a list or an
object is named by its kind and length, never walked (handler/client_text.py).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from handler.bucket import JOB_FIELDS, BucketAddressError, BucketSettings, make_bucket
from handler.client_text import shown_value
from handler.errors import ErrorCode, JobError
from model.base import DEFAULT_PROMPT
from model.declaration import InputSupport
from model.options import MAX_TEXT_LENGTH, InvalidOptionError, Option, json_type
from model.registry import ALL_MODES, BACKENDS

OUTPUT_TYPES = ("auto", "base64", "s3")
#: every generation mode the contract knows; which of them an endpoint offers is its backend's `modes`
MODES = ALL_MODES
MAX_SEED = 2**63 - 1
# a job without a seed gets a random one below this (docs/CONTRACT.md, `seed`)
RANDOM_SEED_LIMIT = 2**31
MIN_SIDE, MAX_SIDE = 64, 4096
# Two speakers (handler/speakers.py): over the same time, or the second once the first has ended.
SPEAKER_TIMINGS = ("parallel", "sequential")
# Where the portrait may come from: an image, a preset, or a video to dub (its first frame).
PORTRAIT_SOURCES = {"image_file": "base64", "image_url": "url", "avatar_id": "preset",
                    "video_file": "base64", "video_url": "url"}
VIDEO_FIELDS = frozenset({"video_file", "video_url"})
SECOND_SPEECH_SOURCES = {"audio_file_2": "base64", "audio_url_2": "url"}

# The fields every backend shares; the rest of a job's fields are its backend's own.
SHARED_OPTIONS: dict[str, Option] = {
    "audio_file": Option(str, "the speech, base64"),
    "audio_url": Option(str, "http(s) URL of the speech"),
    "image_file": Option(str, "the portrait, base64"),
    "image_url": Option(str, "http(s) URL of the portrait"),
    "avatar_id": Option(str, "a preset portrait from PRESET_AVATARS_DIR/<avatar_id>/"),
    "video_file": Option(str, "a video to dub, base64, in place of the portrait"),
    "video_url": Option(str, "http(s) URL of a video to dub, in place of the portrait"),
    "audio_file_2": Option(str, "the second speaker's speech, base64"),
    "audio_url_2": Option(str, "http(s) URL of the second speaker's speech"),
    "speaker_timing": Option(str, "how two speakers' speeches are laid out in time", default="parallel",
                             choices=SPEAKER_TIMINGS),
    "prompt": Option(str, "text guidance (diffusion backends)", default=DEFAULT_PROMPT, max_length=MAX_TEXT_LENGTH),
    "resolution": Option(str, "a pixel area budget"),
    "seed": Option(int, "the random seed, reported back so a result can be reproduced", low=0, high=MAX_SEED),
    "mode": Option(str, "the generation mode", choices=MODES),
    "stream": Option(bool, "also send the video in playable segments while it renders", default=False),
    "output_type": Option(str, "where the video goes", default="auto", choices=OUTPUT_TYPES),
    "max_duration_seconds": Option(float, "refuse longer audio instead of running for an hour"),
}
SHARED_FIELDS = frozenset(SHARED_OPTIONS)
AVATAR_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Every field of the contract, shared or a backend's, is named so; any other name is refused as it is.
FIELD_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# No field takes a whole number past 64 bits (seed's MAX_SEED is the largest).
MAX_NUMBER_BITS = 64
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
    #: the portrait's source: an image, a preset, or a video to dub (`video`)
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
    #: the second speaker's speech (audio_file_2 / audio_url_2); None: one speaker
    audio_2: MediaSource | None = None
    #: how two speeches are laid out in time, one of SPEAKER_TIMINGS (meaningless for one)
    speaker_timing: str = SPEAKER_TIMINGS[0]

    @property
    def video(self) -> MediaSource | None:
        """The video to dub (video_file / video_url), which is also where the portrait comes from."""
        return self.image if self.image.field in VIDEO_FIELDS else None

    @property
    def speech_fields(self) -> str:
        """The fields the job's speech comes from, as a sentence names them."""
        return self.audio.field if self.audio_2 is None else f"{self.audio.field} with {self.audio_2.field}"


def invalid(message: str) -> JobError:
    return JobError(ErrorCode.INVALID_INPUT, message)


def parse_job(job: Mapping[str, Any], max_audio_seconds: float, default_mode: str = MODES[0]) -> JobRequest:
    """Turn a RunPod job into a JobRequest, or raise JobError(INVALID_INPUT) naming the field.

    `default_mode` is the endpoint's mode for a job that names none.
    """
    raw = job.get("input")
    if not isinstance(raw, dict):
        raise invalid(
            '"input" must be a JSON object with audio_file (or audio_url) and image_file (or image_url, avatar_id, '
            'video_file, video_url).'
        )
    _screen_fields(raw)
    audio_2 = _second_speech(raw)
    audio = _one_source(raw, "audio", {"audio_file": "base64", "audio_url": "url"})
    image = _one_source(raw, "image", PORTRAIT_SOURCES)
    if image.kind == "preset" and not AVATAR_ID_PATTERN.match(image.value):
        raise invalid("avatar_id may contain only letters, digits, '.', '_' and '-'; use the id of a preset avatar.")
    return JobRequest(
        audio=audio,
        image=image,
        prompt=_declared(raw, "prompt"),
        max_area=None if raw.get("resolution") is None else parse_resolution_area(raw["resolution"]),
        seed=_seed(raw),
        mode=_declared(raw, "mode") or default_mode,
        backend_fields={name: value for name, value in raw.items() if name not in SHARED_FIELDS},
        output_type=_declared(raw, "output_type"),
        max_duration_seconds=_max_duration(raw.get("max_duration_seconds"), max_audio_seconds),
        stream=_declared(raw, "stream"),
        s3_override=_s3_override(job.get("s3Config")),
        audio_2=audio_2,
        speaker_timing=_declared(raw, "speaker_timing"),
    )


def _second_speech(raw: Mapping[str, Any]) -> MediaSource | None:
    """The second speaker's speech, if any; refuses a second speech without a first, and
    `speaker_timing` without a second speech (it would say nothing)."""
    given = [name for name in SECOND_SPEECH_SOURCES if raw.get(name) not in (None, "")]
    if not given:
        if raw.get("speaker_timing") is not None:
            raise invalid("speaker_timing lays out two speakers' speeches in time, and this job sends one: send the "
                          "second speaker's as audio_file_2 or audio_url_2, or leave speaker_timing out.")
        return None
    if all(raw.get(name) in (None, "") for name in ("audio_file", "audio_url")):
        raise invalid(f"{given[0]} is the second speaker's speech, and no first speech was given: send the first "
                      "speaker's as audio_file or audio_url (a single speech goes there, not in "
                      f"{given[0]}).")
    return _one_source(raw, "second speech", SECOND_SPEECH_SOURCES)


def check_backend_inputs(request: JobRequest, inputs: InputSupport, backend: str) -> None:
    """Refuse, before any media work, a video or a second speech the endpoint's backend does not
    take (its declaration's `inputs`), naming the field and what the backend takes instead."""
    video = request.video
    if video is not None and not inputs.video:
        others = _backends_taking(lambda support: support.video)
        raise invalid(f"{video.field} is a video to dub, and this endpoint's backend ({backend}) takes no video: it "
                      "animates one portrait. Send image_file, image_url or avatar_id instead"
                      f"{others and f' (a video is taken by {others} endpoints)'}.")
    if request.audio_2 is not None and inputs.speakers < 2:
        others = _backends_taking(lambda support: support.speakers >= 2)
        raise invalid(f"{request.audio_2.field} is a second speaker's speech, and this endpoint's backend ({backend}) "
                      "animates one speaker: send one speech (audio_file or audio_url) and leave "
                      f"{request.audio_2.field} and speaker_timing out"
                      f"{others and f' (two speakers are taken by {others} endpoints)'}.")


def _backends_taking(takes: Callable[[InputSupport], bool]) -> str:
    """The registry's backends whose declared inputs `takes` accepts, as a sentence lists them."""
    return " and ".join(name for name, entry in BACKENDS.items() if takes(entry.inputs))


def _screen_fields(raw: Mapping[str, Any]) -> None:
    """Refuse, naming it bounded, a field whose name or value no sentence should repeat as sent.

    A shared field's value is left to its declaration (`_declared` shows it bounded); a backend's
    field is bounded here, before its options (model/options.py) repeat it.
    """
    for name, value in raw.items():
        if not isinstance(name, str) or not FIELD_NAME_PATTERN.match(name):
            raise invalid(f"the input has a field named {shown_value(name)}, which no job takes: field names are "
                          "letters, digits and '_' (docs/CONTRACT.md); leave it out.")
        if name in SHARED_FIELDS:
            continue
        if isinstance(value, (list, dict)):
            raise invalid(f"{name} must be a string, a number or a boolean, not {json_type(value)}: no field of a "
                          "job's input takes one (docs/CONTRACT.md).")
        if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
            raise invalid(f"{name} is {len(value)} characters long; keep it under {MAX_TEXT_LENGTH}.")
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_NUMBER_BITS:
            raise invalid(f"{name} is {shown_value(value)}, larger than any field takes (docs/CONTRACT.md).")


def _one_source(raw: Mapping[str, Any], what: str, fields: Mapping[str, str]) -> MediaSource:
    present = [name for name in fields if raw.get(name) not in (None, "")]
    names = ", ".join(fields)
    if not present:
        raise invalid(f"no {what} given: send exactly one of {names}.")
    if len(present) > 1:
        raise invalid(f"{' and '.join(present)} were both given: send exactly one of {names}.")
    field = present[0]
    value: str = _declared(raw, field)
    return MediaSource(field=field, kind=fields[field], value=value.strip())


def _declared(raw: Mapping[str, Any], field: str) -> Any:
    """`raw[field]` checked against its declaration in SHARED_OPTIONS; its default when absent.

    The declaration's sentence repeats a refused value as repr writes it: here it is shown escaped
    and cut instead, and a list or an object (which no shared field takes) is judged as an empty one
    of its kind, so that repr never walks what a client may have nested a thousand deep.
    """
    value = raw.get(field)
    judged = type(value)() if isinstance(value, (list, dict)) else value
    try:
        return SHARED_OPTIONS[field].take({field: judged}, field)
    except InvalidOptionError as error:
        raise invalid(str(error).replace(repr(judged), shown_value(value))) from None


def parse_resolution_area(value: Any) -> int:
    """The pixel-area budget of a "W*H" resolution string."""
    match = RESOLUTION_PATTERN.match(value) if isinstance(value, str) else None
    if not match:
        raise invalid(f'resolution must be a string like "832*480" (width*height), not {shown_value(value)}.')
    width, height = int(match.group(1)), int(match.group(2))
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise invalid(f"resolution {shown_value(value)} is out of range: each side must be between {MIN_SIDE} and "
                      f"{MAX_SIDE}.")
    return width * height


def _seed(raw: Mapping[str, Any]) -> int:
    seed: int | None = _declared(raw, "seed")
    return secrets.randbelow(RANDOM_SEED_LIMIT) if seed is None else seed


def _max_duration(value: Any, worker_limit: float) -> float:
    if value is None:
        return worker_limit
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise invalid(f"max_duration_seconds must be a positive number of seconds, not {shown_value(value)}.")
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
