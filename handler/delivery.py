"""Hand the MP4 to the user: inline base64, or an S3 upload with a presigned GET URL.

An upload has one deadline (UPLOAD_TIMEOUT_SECONDS), retries included: every attempt's connect and
read timeouts are what is left of it, the file is read through a guard that stops sending when it
passes, and a retry starts only while time is left. A failure says why, in the user's words.
"""

from __future__ import annotations

import base64
import datetime
import functools
import logging
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import IO, Any

import boto3
import botocore.config
import botocore.exceptions

from handler.bucket import BucketSettings
from handler.errors import ErrorCode, JobError
from handler.fetch import resolve_public

log = logging.getLogger(__name__)

# Room for the other result fields around the base64 string.
RESULT_OVERHEAD_BYTES = 4096
KEY_PREFIX = "talking-head"
MAX_CONNECT_SECONDS = 10.0
# A retry starts only with at least this much of the deadline left.
MIN_ATTEMPT_SECONDS = 1.0
FIRST_RETRY_PAUSE_SECONDS = 0.5
MAX_RETRY_PAUSE_SECONDS = 8.0
# S3's answers that a later attempt may not get (throttling, a store's own trouble).
RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "Throttling"}
ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken",
                "ExpiredToken", "AccountProblem"}


class _DeadlinePassed(Exception):
    """The upload's deadline passed (before an attempt, or while its body was being sent)."""


def base64_size(num_bytes: int) -> int:
    return 4 * ((num_bytes + 2) // 3)


def fits_inline(video_bytes: int, max_result_bytes: int) -> bool:
    return base64_size(video_bytes) + RESULT_OVERHEAD_BYTES <= max_result_bytes


def choose_destination(output_type: str, bucket: BucketSettings | None) -> str:
    """"base64" or "s3", known before anything is rendered; INVALID_INPUT for "s3" without a bucket."""
    if output_type == "s3" or (output_type == "auto" and bucket is not None):
        if bucket is None:
            raise JobError(
                ErrorCode.INVALID_INPUT,
                "output_type is 's3' but no bucket is configured; set the BUCKET_* variables on the endpoint or send s3Config.",
            )
        return "s3"
    return "base64"


def check_inline_size(video_bytes: int, max_result_bytes: int, so_far: str = "") -> None:
    """OUTPUT_TOO_LARGE when a video of this many bytes (or more) cannot go back inline.

    `so_far` (" after 75 of 1500 frames") says the video was stopped while it was still growing.
    """
    if not fits_inline(video_bytes, max_result_bytes):
        size = f"reached {video_bytes / 1e6:.2f} MB{so_far}" if so_far else f"is {video_bytes / 1e6:.2f} MB"
        raise JobError(
            ErrorCode.OUTPUT_TOO_LARGE,
            f"the video {size}, too large to return inline (limit about "
            f"{(max_result_bytes - RESULT_OVERHEAD_BYTES) * 3 / 4 / 1e6:.1f} MB); configure a bucket "
            "(BUCKET_* variables or s3Config) and use output_type 's3' or 'auto'.",
        )


def check_bucket_address(bucket: BucketSettings, allow_private: bool) -> None:
    """A job's own bucket (s3Config) must be on a public address, like any URL a job names."""
    if not bucket.from_job or bucket.endpoint_url is None:
        return
    parsed = urllib.parse.urlsplit(bucket.endpoint_url)
    resolve_public(
        parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80), bucket.fields.endpoint,
        allow_private, ErrorCode.INVALID_INPUT, "which this worker does not upload to; use a public S3 endpoint.",
    )


def inline_result(video: Path) -> dict[str, Any]:
    return {"video_base64": base64.b64encode(video.read_bytes()).decode("ascii")}


def upload_result(
    video: Path, job_id: str, bucket: BucketSettings, expiry_seconds: int, timeout_seconds: float,
) -> dict[str, Any]:
    """Upload with an unguessable key within `timeout_seconds`, and return the presigned URL (never logged)."""
    started = time.monotonic()
    deadline = started + timeout_seconds
    now = datetime.datetime.now(datetime.timezone.utc)
    key = f"{KEY_PREFIX}/{now:%Y/%m/%d}/{_safe(job_id)}-{secrets.token_urlsafe(18)}.mp4"
    attempt = 0
    with video.open("rb") as file:
        while True:
            attempt += 1
            try:
                _put(file, video.stat().st_size, bucket, key, deadline)
                break
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, _DeadlinePassed) as raised:
                error = _unwrap(raised)
                pause = min(FIRST_RETRY_PAUSE_SECONDS * 2 ** (attempt - 1), MAX_RETRY_PAUSE_SECONDS)
                retry = _is_retryable(error) and time.monotonic() + pause + MIN_ATTEMPT_SECONDS < deadline
                reason = _reason(error, bucket, timeout_seconds)
                if not retry:
                    log.warning("upload to bucket %s failed after %.2f s and %d attempt(s): %s",
                                bucket.bucket_name, time.monotonic() - started, attempt, reason)
                    raise JobError(ErrorCode.UPLOAD_FAILED, f"the video could not be uploaded: {reason}") from None
                log.info("upload to bucket %s: attempt %d failed (%s); retrying", bucket.bucket_name, attempt, reason)
                time.sleep(pause)
    url = presign_url(bucket, key, expiry_seconds)
    log.info("uploaded %s to bucket %s in %.2f s", key, bucket.bucket_name, time.monotonic() - started)
    expires_at = now + datetime.timedelta(seconds=expiry_seconds)
    return {
        "video_url": url,
        "video_s3_key": key,
        "url_expires_at": expires_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def presign_url(bucket: BucketSettings, key: str, expiry_seconds: int) -> str:
    """A GET URL for the object; made locally (no request, nothing to wait for)."""
    signer = _session(bucket).client("s3", **_client_options(bucket, MAX_CONNECT_SECONDS, MAX_CONNECT_SECONDS))
    return signer.generate_presigned_url("get_object", Params={"Bucket": bucket.bucket_name, "Key": key}, ExpiresIn=expiry_seconds)


def _put(file: IO[bytes], size: int, bucket: BucketSettings, key: str, deadline: float) -> None:
    """One attempt: a single PUT whose every wait ends by the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _DeadlinePassed()
    client = _session(bucket).client("s3", **_client_options(bucket, min(MAX_CONNECT_SECONDS, remaining), remaining))
    file.seek(0)
    client.put_object(
        Bucket=bucket.bucket_name, Key=key, Body=_DeadlineReader(file, deadline), ContentLength=size,
        ContentType="video/mp4",
    )


class _DeadlineReader:
    """The file as botocore reads it to send it, refusing to go on once the deadline has passed."""

    def __init__(self, file: IO[bytes], deadline: float) -> None:
        self._file = file
        self._deadline = deadline

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            raise _DeadlinePassed()
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


@functools.lru_cache(maxsize=8)
def _session(bucket: BucketSettings) -> boto3.session.Session:
    """One session per bucket, reused by later jobs: it holds the parsed service model, which makes
    the per-attempt clients (whose timeouts are what is left of the deadline) cheap to build."""
    return boto3.session.Session(
        aws_access_key_id=bucket.access_key_id, aws_secret_access_key=bucket.secret_access_key,
        region_name=bucket.region,
    )


def _client_options(bucket: BucketSettings, connect_timeout: float, read_timeout: float) -> dict[str, Any]:
    return {
        "endpoint_url": bucket.endpoint_url,
        "config": botocore.config.Config(
            signature_version="s3v4", s3={"addressing_style": bucket.addressing},
            # the retries are ours, within the deadline
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            # Many S3-compatible stores refuse the streamed checksums newer botocore sends by default.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        ),
    }


def _unwrap(error: Exception) -> Exception:
    """botocore wraps what the body's read raised (the deadline) in HTTPClientError."""
    inner = getattr(error, "kwargs", {}).get("error") if isinstance(error, botocore.exceptions.HTTPClientError) else None
    return inner if isinstance(inner, _DeadlinePassed) else error


def _is_retryable(error: Exception) -> bool:
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or _code(error) in RETRYABLE_CODES
    # connection refused or reset, timeouts: the network's, not the request's fault
    return isinstance(error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError))


def _reason(error: Exception, bucket: BucketSettings, timeout_seconds: float) -> str:
    """Why the upload failed, and what to check, in the user's words: never a secret or a class name."""
    fields, name = bucket.fields, bucket.bucket_name
    if isinstance(error, (_DeadlinePassed, botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectTimeoutError)):
        return (f"{bucket.host} did not answer within the upload deadline ({timeout_seconds:g} s, "
                f"UPLOAD_TIMEOUT_SECONDS); check {fields.endpoint}, or raise the deadline for very large videos.")
    if isinstance(error, botocore.exceptions.ClientError):
        code = _code(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return f"there is no bucket {name!r} at {bucket.host}; check {fields.bucket} (create the bucket first)."
        if code in ACCESS_CODES or status == 403:
            return (f"access to bucket {name!r} at {bucket.host} was denied ({code}); check {fields.keys} "
                    "and that they may write to the bucket.")
        if status and status >= 500:
            return f"{bucket.host} kept answering HTTP {status} ({code}); the store has trouble: try again later."
        return (f"{bucket.host} answered HTTP {status} ({code}); check that {fields.endpoint} is an S3 endpoint "
                f"and {fields.bucket} a bucket in it.")
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return f"could not connect to {bucket.host}; check {fields.endpoint}."
    if isinstance(error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return f"the connection to {bucket.host} broke off; check {fields.endpoint}."
    log.warning("S3 upload error not classified: %s", type(error).__name__)
    return f"the S3 request to {bucket.host} failed; check {fields.endpoint}, {fields.bucket} and {fields.keys}."


def _code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code") or "no error code")


def _safe(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in job_id)[:64] or "job"
