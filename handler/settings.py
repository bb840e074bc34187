"""The worker's configuration, read from the environment in one place (docs/CONTRACT.md, "Environment")."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

from handler.schema import MODES

RUNPOD_VOLUME = Path("/runpod-volume")
# SigV4 presigned URLs cannot outlive seven days.
MAX_URL_EXPIRY_SECONDS = 7 * 24 * 3600


class SettingsError(ValueError):
    """An environment variable has a value the worker cannot use."""


@dataclasses.dataclass(frozen=True)
class BucketSettings:
    endpoint_url: str | None
    access_key_id: str
    secret_access_key: str
    bucket_name: str

    def __repr__(self) -> str:  # never print the secret
        return f"BucketSettings(endpoint_url={self.endpoint_url!r}, bucket_name={self.bucket_name!r})"


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    model_backend: str | None
    model_dir: Path
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
    #: the `mode` of a job that names none; None: the backend's own first mode. Whether the
    #: loaded backend offers it is checked at worker start (handler/startup.py).
    default_mode: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "WorkerSettings":
        env = os.environ if env is None else env
        return cls(
            model_backend=env.get("MODEL_BACKEND") or None,
            model_dir=_model_dir(env),
            preset_avatars_dir=Path(env["PRESET_AVATARS_DIR"]) if env.get("PRESET_AVATARS_DIR") else None,
            bucket=_bucket(env),
            url_expiry_seconds=_int(env, "URL_EXPIRY_SECONDS", 3600, 1, MAX_URL_EXPIRY_SECONDS),
            max_audio_seconds=_float(env, "MAX_AUDIO_SECONDS", 300.0),
            max_input_bytes=_int(env, "MAX_INPUT_BYTES", 50 * 1024 * 1024, 1024),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 50_000_000, 1),
            max_inline_result_bytes=_int(env, "MAX_INLINE_RESULT_BYTES", 10_000_000, 1024),
            allow_private_urls=_bool(env, "ALLOW_PRIVATE_URLS"),
            fetch_timeout_seconds=_float(env, "FETCH_TIMEOUT_SECONDS", 30.0),
            default_mode=_choice(env, "DEFAULT_MODE", MODES),
        )


def _model_dir(env: Mapping[str, str]) -> Path:
    if env.get("MODEL_DIR"):
        return Path(env["MODEL_DIR"])
    if RUNPOD_VOLUME.is_dir():
        return RUNPOD_VOLUME / "models"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "talking-head" / "models"


def _bucket(env: Mapping[str, str]) -> BucketSettings | None:
    names = ("BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")
    given = [name for name in names if env.get(name)]
    if not given:
        return None
    missing = [name for name in names if not env.get(name)]
    if missing:
        raise SettingsError(f"the S3 bucket is half configured: set {', '.join(missing)} as well.")
    return BucketSettings(
        endpoint_url=env.get("BUCKET_ENDPOINT_URL") or None,
        access_key_id=env["BUCKET_ACCESS_KEY_ID"],
        secret_access_key=env["BUCKET_SECRET_ACCESS_KEY"],
        bucket_name=env["BUCKET_NAME"],
    )


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
    if not value > 0:
        raise SettingsError(f"{name}={raw!r} must be positive.")
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
