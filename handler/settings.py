"""The worker's configuration, read from the environment in one place (docs/CONTRACT.md, "Environment")."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path

from handler.bucket import ENV_FIELDS, BucketAddressError, BucketSettings, make_bucket
from handler.schema import MODES

RUNPOD_VOLUME = Path("/runpod-volume")
# SigV4 presigned URLs cannot outlive seven days.
MAX_URL_EXPIRY_SECONDS = 7 * 24 * 3600
# Every queued job holds its inputs in memory (up to twice MAX_INPUT_BYTES) until it runs.
MAX_SERVER_QUEUE_SIZE = 100


# The RunPod SDK's log levels, most verbose first ("NOTSET" silences it). At DEBUG and TRACE it
# logs every job's input and output (base64 media, presigned URLs): never below INFO.
SDK_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


class SettingsError(ValueError):
    """An environment variable has a value the worker cannot use."""


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    model_backend: str | None
    model_dir: Path
    #: WAN_MEMORY_MODE: full, fp8 or offload (checked by the Wan backend); None: from the GPU's free memory
    wan_memory_mode: str | None
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
    #: the always-on server (handler/server.py): jobs that may wait behind the running one
    server_queue_size: int = 4
    #: the always-on server: how long a finished video stays at its download_url
    server_download_retention_seconds: int = 3600
    #: the always-on server: a job still running after this long is stopped at its next step
    server_job_timeout_seconds: float = 3600.0
    #: STREAM_RESULTS: the RunPod handler is a generator, so that `stream` jobs send segments
    #: through /stream/{id}; it turns every job's final output into the list of what it sent
    stream_results: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        return cls(
            model_backend=env.get("MODEL_BACKEND") or None,
            model_dir=_model_dir(env),
            wan_memory_mode=env.get("WAN_MEMORY_MODE", "").strip() or None,
            preset_avatars_dir=Path(env["PRESET_AVATARS_DIR"]) if env.get("PRESET_AVATARS_DIR") else None,
            bucket=_bucket(env),
            url_expiry_seconds=_int(env, "URL_EXPIRY_SECONDS", 3600, 1, MAX_URL_EXPIRY_SECONDS),
            max_audio_seconds=_float(env, "MAX_AUDIO_SECONDS", 300.0),
            max_input_bytes=_int(env, "MAX_INPUT_BYTES", 50 * 1024 * 1024, 1024),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 50_000_000, 1),
            max_inline_result_bytes=_int(env, "MAX_INLINE_RESULT_BYTES", 10_000_000, 1024),
            allow_private_urls=_bool(env, "ALLOW_PRIVATE_URLS"),
            fetch_timeout_seconds=_float(env, "FETCH_TIMEOUT_SECONDS", 30.0),
            upload_timeout_seconds=_float(env, "UPLOAD_TIMEOUT_SECONDS", 120.0),
            default_mode=_choice(env, "DEFAULT_MODE", MODES),
            server_queue_size=_int(env, "SERVER_QUEUE_SIZE", 4, 0, MAX_SERVER_QUEUE_SIZE),
            server_download_retention_seconds=_int(env, "SERVER_DOWNLOAD_RETENTION_SECONDS", 3600, 1),
            server_job_timeout_seconds=_float(env, "SERVER_JOB_TIMEOUT_SECONDS", 3600.0),
            stream_results=_bool(env, "STREAM_RESULTS"),
        )


def _model_dir(env: Mapping[str, str]) -> Path:
    if env.get("MODEL_DIR"):
        return Path(env["MODEL_DIR"])
    if RUNPOD_VOLUME.is_dir():
        return RUNPOD_VOLUME / "models"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "talking-head" / "models"


def _bucket(env: Mapping[str, str]) -> BucketSettings | None:
    """The bucket of BUCKET_*: the two keys, and the bucket named by BUCKET_NAME or in the endpoint URL."""
    names = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")
    if not any(env.get(name, "").strip() for name in names):
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


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int | None = None) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number.") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SettingsError(f"{name}={raw!r} must be {bounds}.")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number.") from None
    if not (value > 0 and math.isfinite(value)):
        raise SettingsError(f"{name}={raw!r} must be a positive, finite number.")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r} is not one of {', '.join(choices)}.")
    return raw


def _bool(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def runs_on_runpod(env: Mapping[str, str] | None = None) -> bool:
    """A real RunPod worker: the platform gave it somewhere to send results (and progress)."""
    env = os.environ if env is None else env
    return bool(env.get("RUNPOD_WEBHOOK_POST_OUTPUT"))


def takes_jobs_from_runpod(env: Mapping[str, str] | None = None) -> bool:
    """The SDK runs its job loop (RunPod's queue) rather than one local test job or the local API."""
    env = os.environ if env is None else env
    return bool(env.get("RUNPOD_WEBHOOK_GET_JOB"))


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
