"""The worker's configuration, read from the environment in one place (docs/CONTRACT.md, "Environment").

The worker's own variables are declared once in WORKER_SETTINGS, each backend's in its declaration
(model/declaration.py); all are read and checked when the worker starts, so a bad value fails the
start with a sentence naming it.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from handler.bucket import ENV_FIELDS, BucketAddressError, BucketSettings, make_bucket
from handler.ice_servers import parse_ice_servers
from model.declaration import Setting, SettingValueError
from model.registry import ALL_MODES, BACKENDS

RUNPOD_VOLUME = Path("/runpod-volume")
# SigV4 presigned URLs cannot outlive seven days.
MAX_URL_EXPIRY_SECONDS = 7 * 24 * 3600
# RunPod's endpoint settings: an execution timeout from 5 s to 7 days.
MIN_EXECUTION_TIMEOUT_SECONDS = 5
MAX_EXECUTION_TIMEOUT_SECONDS = 7 * 24 * 3600
# Every queued job holds its inputs in memory (up to twice MAX_INPUT_BYTES) until it runs.
MAX_SERVER_QUEUE_SIZE = 100
# A minimum body rate above a fast uplink's (100 MB/s) would refuse every client.
MAX_MIN_BODY_BYTES_PER_SECOND = 100_000_000
DEFAULT_SERVER_DOWNLOAD_MAX_BYTES = 10 * 1024**3
DEFAULT_SCRATCH_RESERVE_BYTES = 100 * 1024**2
# A video to dub: five minutes of 1080p phone video at its usual 5 Mbit/s is under 200 MB.
DEFAULT_MAX_VIDEO_BYTES = 200 * 1000**2
# 4K UHD: what phones record. The result keeps the video's frame size, so its MP4 is encoded at
# it, and each decoded frame is 25 MB of RGB, one at a time; past 4K that buys nothing a 480p or
# 720p model can show.
DEFAULT_MAX_VIDEO_PIXELS = 3840 * 2160


# The RunPod SDK's log levels, most verbose first ("NOTSET" silences it). At DEBUG and TRACE it
# logs every job's input and output (base64 media, presigned URLs): never below INFO.
SDK_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


class SettingsError(ValueError):
    """An environment variable has a value the worker cannot use."""


# The worker's own settings besides the model's and the bucket's: each variable once, with its
# type, bounds and default; WorkerSettings has a field of the same name in lower case.
WORKER_SETTINGS = (
    Setting("URL_EXPIRY_SECONDS", int, 3600, "how long a presigned result URL stays valid",
            low=1, high=MAX_URL_EXPIRY_SECONDS),
    Setting("MAX_AUDIO_SECONDS", float, 300.0, "the longest speech a job may send"),
    Setting("MAX_INPUT_BYTES", int, 50 * 1024 * 1024, "the largest input a job may send or link to", low=1024),
    Setting("MAX_IMAGE_PIXELS", int, 50_000_000, "the largest portrait (width x height) a job may send", low=1),
    Setting("MAX_VIDEO_BYTES", int, DEFAULT_MAX_VIDEO_BYTES, "the largest video to dub a job may send or link to",
            low=1024),
    Setting("MAX_VIDEO_SECONDS", float, 300.0, "the longest video to dub a job may send"),
    Setting("MAX_VIDEO_PIXELS", int, DEFAULT_MAX_VIDEO_PIXELS,
            "the largest frame (width x height, as displayed) of a video to dub", low=1),
    Setting("MAX_INLINE_RESULT_BYTES", int, 10_000_000, "the largest MP4 returned inline as base64", low=1024),
    Setting("ALLOW_PRIVATE_URLS", bool, False, "let jobs fetch URLs on private addresses"),
    Setting("FETCH_TIMEOUT_SECONDS", float, 30.0, "the deadline of one URL download"),
    Setting("UPLOAD_TIMEOUT_SECONDS", float, 120.0, "one deadline for a whole S3 upload, its retries included"),
    Setting("DEFAULT_MODE", str, None, "the mode of a job that names none (empty: the backend's first)",
            choices=ALL_MODES),
    Setting("SERVER_QUEUE_SIZE", int, 4, "always-on server: jobs that may wait behind the running one",
            low=0, high=MAX_SERVER_QUEUE_SIZE),
    Setting("SERVER_DOWNLOAD_RETENTION_SECONDS", int, 3600,
            "always-on server: how long a finished video stays at its download_url", low=1),
    Setting("SERVER_JOB_TIMEOUT_SECONDS", float, 3600.0,
            "always-on server: a job still running after this long is stopped at its next step"),
    Setting("SERVER_MIN_BODY_BYTES_PER_SECOND", int, 10_000,
            "always-on server: a request body arriving slower than this on average (after its first 10 s) is cut; "
            "0: no minimum", low=0, high=MAX_MIN_BODY_BYTES_PER_SECOND),
    Setting("SERVER_DOWNLOAD_MAX_BYTES", int, DEFAULT_SERVER_DOWNLOAD_MAX_BYTES,
            "always-on server: the most bytes of finished videos kept at their download_url (the oldest go first)",
            low=1024),
    Setting("SCRATCH_RESERVE_BYTES", int, DEFAULT_SCRATCH_RESERVE_BYTES,
            "free space the temporary folder's disk keeps beyond the most a job may write there", low=0),
    Setting("STREAM_RESULTS", bool, False, "the RunPod handler streams segments through /stream/{id}"),
    Setting("EXECUTION_TIMEOUT_SECONDS", int, None,
            "the endpoint's execution timeout; a job whose estimated time exceeds it is refused before rendering",
            low=MIN_EXECUTION_TIMEOUT_SECONDS, high=MAX_EXECUTION_TIMEOUT_SECONDS),
    Setting("SERVER_API_KEY", str, None,
            "always-on server: the bearer token(s), comma-separated, that /generate and /download require"),
    Setting("SERVER_PUBLIC_URL", str, None,
            "always-on server: the base of every download_url (empty: the address the request reached)"),
    Setting("LIVE_MAX_SESSIONS", int, None,
            "live sessions one worker holds at once (empty: the backend's own figure; 0: none)", low=0, high=1000),
    Setting("LIVE_MAX_SESSION_SECONDS", float, 3600.0, "a live session is ended after this long"),
    Setting("LIVE_IDLE_TIMEOUT_SECONDS", float, 300.0,
            "a live session that receives no speech for this long is ended"),
    Setting("LIVE_ICE_SERVERS", str, None,
            "WebRTC sessions: STUN/TURN servers, JSON as a browser's RTCConfiguration.iceServers (empty: none)"),
)
# Read outside WORKER_SETTINGS: which model and where its weights are, the presets, the SDK's log level.
OTHER_ENV_NAMES = ("MODEL_BACKEND", "MODEL_DIR", "PRESET_AVATARS_DIR", "RUNPOD_LOG_LEVEL", "RUNPOD_DEBUG_LEVEL")
# Set by RunPod on its workers: whether this is one, and whether the SDK takes jobs from its queue.
RESULTS_URL_ENV = "RUNPOD_WEBHOOK_POST_OUTPUT"
JOBS_URL_ENV = "RUNPOD_WEBHOOK_GET_JOB"
RUNPOD_ENV_NAMES = (RESULTS_URL_ENV, JOBS_URL_ENV)
BUCKET_ENV_NAMES = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")


def environment_names() -> tuple[str, ...]:
    """Every environment variable the worker reads: its own, the bucket's and each backend's."""
    backend_names = (setting.env for entry in BACKENDS.values() for setting in entry.settings)
    worker_names = (setting.env for setting in WORKER_SETTINGS)
    return tuple(dict.fromkeys((*OTHER_ENV_NAMES, *worker_names, *BUCKET_ENV_NAMES, *backend_names,
                                *RUNPOD_ENV_NAMES)))


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    #: MODEL_BACKEND, a name in model/registry.py; None: chosen at start from the machine
    model_backend: str | None
    model_dir: Path
    #: each backend's declared settings (its declaration's `settings`) by backend name, then by
    #: variable name; with MODEL_BACKEND set, only that backend's are read
    backend_settings: Mapping[str, Mapping[str, Any]]
    preset_avatars_dir: Path | None
    bucket: BucketSettings | None
    url_expiry_seconds: int
    max_audio_seconds: float
    max_input_bytes: int
    max_image_pixels: int
    # The JSON result must fit the platform's smallest body limit (/run: 10 MB), or it is
    # silently dropped; inline MP4s larger than this budget go to S3 or fail clearly.
    max_inline_result_bytes: int
    allow_private_urls: bool
    fetch_timeout_seconds: float
    #: one deadline for a whole S3 upload, its retries included
    upload_timeout_seconds: float = 120.0
    #: the `mode` of a job that names none; None: the backend's own first mode. Whether the
    #: loaded backend offers it is checked at worker start (handler/startup.py).
    default_mode: str | None = None
    #: the always-on server: jobs that may wait behind the running one
    server_queue_size: int = 4
    #: the always-on server: how long a finished video stays at its download_url
    server_download_retention_seconds: int = 3600
    #: the always-on server: a job still running after this long is stopped at its next step
    server_job_timeout_seconds: float = 3600.0
    #: the always-on server: a request body arriving slower than this many bytes per second, on average
    #: after its first seconds (http_input.BODY_RATE_GRACE_SECONDS), is cut; 0: no minimum
    server_min_body_bytes_per_second: int = 10_000
    #: SERVER_DOWNLOAD_MAX_BYTES: the always-on server keeps at most this many bytes of videos for
    #: download_url; a new one makes room by removing the oldest (handler/downloads.py)
    server_download_max_bytes: int = DEFAULT_SERVER_DOWNLOAD_MAX_BYTES
    #: MAX_VIDEO_BYTES, MAX_VIDEO_SECONDS, MAX_VIDEO_PIXELS: a video to dub (handler/source_video.py)
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES
    max_video_seconds: float = 300.0
    max_video_pixels: int = DEFAULT_MAX_VIDEO_PIXELS
    #: SCRATCH_RESERVE_BYTES: free space a job's temporary folder keeps beyond its need (handler/scratch.py)
    scratch_reserve_bytes: int = DEFAULT_SCRATCH_RESERVE_BYTES
    #: STREAM_RESULTS: the RunPod handler is a generator, so that `stream` jobs send segments
    #: through /stream/{id}; it turns every job's final output into the list of what it sent
    stream_results: bool = False
    #: EXECUTION_TIMEOUT_SECONDS: the endpoint's execution timeout, which jobs are sized against
    #: (model/speed.py); None: no check
    execution_timeout_seconds: int | None = None
    #: SERVER_API_KEY: the always-on server's bearer tokens, comma-separated; never in a repr or a log
    server_api_key: str | None = dataclasses.field(default=None, repr=False)
    #: SERVER_PUBLIC_URL: where clients reach the always-on server, e.g. https://talk.example.com
    server_public_url: str | None = None
    #: LIVE_MAX_SESSIONS: live sessions held at once; None: the backend's declared `live.max_sessions`
    live_max_sessions: int | None = None
    #: LIVE_MAX_SESSION_SECONDS: a live session ends after this long, whatever it is doing
    live_max_session_seconds: float = 3600.0
    #: LIVE_IDLE_TIMEOUT_SECONDS: a live session that receives no speech for this long ends
    live_idle_timeout_seconds: float = 300.0
    #: LIVE_ICE_SERVERS, parsed (handler/ice_servers.py); TURN entries hold credentials, so never in a repr
    live_ice_servers: tuple[dict[str, Any], ...] = dataclasses.field(default=(), repr=False)

    @property
    def server_api_keys(self) -> tuple[str, ...]:
        """The bearer tokens the always-on server accepts; none: it is open."""
        return split_api_keys(self.server_api_key)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        try:
            values = {setting.env.lower(): setting.read(env) for setting in WORKER_SETTINGS}
            backend = env.get("MODEL_BACKEND", "").strip() or None
            # an unknown MODEL_BACKEND is the model's fault (MODEL_UNAVAILABLE), reported when loading it
            backends = [BACKENDS[backend]] if backend in BACKENDS else [] if backend else list(BACKENDS.values())
            backend_settings = {entry.name: entry.read_settings(env) for entry in backends}
        except SettingValueError as error:
            raise SettingsError(str(error)) from None
        _check_public_url(values["server_public_url"])
        try:
            values["live_ice_servers"] = parse_ice_servers(values["live_ice_servers"])
        except ValueError as error:
            raise SettingsError(str(error)) from None
        return cls(
            model_backend=backend,
            model_dir=_model_dir(env),
            backend_settings=backend_settings,
            preset_avatars_dir=Path(env["PRESET_AVATARS_DIR"]) if env.get("PRESET_AVATARS_DIR") else None,
            bucket=_bucket(env),
            **values,
        )


def _check_public_url(url: str | None) -> None:
    if url is None:
        return
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
        raise SettingsError(f"SERVER_PUBLIC_URL={url!r} is not a base URL; set it to e.g. https://talk.example.com.")


def split_api_keys(raw: str | None) -> tuple[str, ...]:
    """SERVER_API_KEY's comma-separated keys."""
    return tuple(key.strip() for key in (raw or "").split(",") if key.strip())


def _model_dir(env: Mapping[str, str]) -> Path:
    """MODEL_DIR; else the models folder of the network volume RunPod mounted; else the user's cache."""
    if env.get("MODEL_DIR"):
        return Path(env["MODEL_DIR"])
    if RUNPOD_VOLUME.is_dir():
        return RUNPOD_VOLUME / "models"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "talking-head" / "models"


def _bucket(env: Mapping[str, str]) -> BucketSettings | None:
    """The bucket of BUCKET_*: the two keys, and the bucket named by BUCKET_NAME or in the endpoint URL."""
    if not any(env.get(name, "").strip() for name in BUCKET_ENV_NAMES):
        return None
    missing = [name for name in ("BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY") if not env.get(name)]
    if missing:
        raise SettingsError(f"the S3 bucket is half configured: set {', '.join(missing)} as well.")
    try:
        return make_bucket(
            env.get("BUCKET_ENDPOINT_URL", "").strip() or None, env.get("BUCKET_NAME", "").strip() or None,
            env["BUCKET_ACCESS_KEY_ID"], env["BUCKET_SECRET_ACCESS_KEY"], ENV_FIELDS,
        )
    except BucketAddressError as error:
        raise SettingsError(str(error)) from None


def runs_on_runpod(env: Mapping[str, str] | None = None) -> bool:
    """A real RunPod worker: the platform gave it somewhere to send results (and progress)."""
    env = os.environ if env is None else env
    return bool(env.get(RESULTS_URL_ENV))


def takes_jobs_from_runpod(env: Mapping[str, str] | None = None) -> bool:
    """The SDK runs its job loop (RunPod's queue) rather than one local test job or the local API."""
    env = os.environ if env is None else env
    return bool(env.get(JOBS_URL_ENV))


def sdk_log_level(requested: str | None, runs_one_local_job: bool) -> str:
    """The RunPod SDK's log level: what was asked for, never below INFO (see SDK_LOG_LEVELS).

    When it runs one local test job it logs the job's whole result at INFO (the MP4 in base64 or
    a presigned URL), so that mode gets WARN; the worker's own log still says how the job went.
    """
    floor = "WARN" if runs_one_local_job else "INFO"
    asked = (requested or "").strip().upper()
    if asked == "NOTSET" or (asked in SDK_LOG_LEVELS and SDK_LOG_LEVELS.index(asked) > SDK_LOG_LEVELS.index(floor)):
        return asked
    return floor


def requested_sdk_log_level(env: Mapping[str, str] | None = None) -> str | None:
    """RUNPOD_LOG_LEVEL (or its old name RUNPOD_DEBUG_LEVEL), as the operator set it."""
    env = os.environ if env is None else env
    return env.get("RUNPOD_LOG_LEVEL") or env.get("RUNPOD_DEBUG_LEVEL")


def set_sdk_log_level(level: str) -> None:
    """Hand the level to the SDK, which reads RUNPOD_LOG_LEVEL once, when it is imported."""
    os.environ["RUNPOD_LOG_LEVEL"] = level
