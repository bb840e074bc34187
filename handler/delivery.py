"""Hand the MP4 to the user: inline base64, or an S3 upload with a presigned GET URL.

An upload has one deadline (UPLOAD_TIMEOUT_SECONDS), retries included: each attempt is one PUT of a
presigned URL that ends by the deadline (handler/s3_put.py), and a retry starts only while time is
left. A stop of the job (cancel, SIGTERM: its JobControl) ends the attempt and the pause before a
retry at once. botocore only signs. A failure says why, in the user's words.

An attempt that sent the whole body and got no answer (or one late) may still have stored the
object: a HEAD of it (its size and MD5) then ends the upload instead of a second PUT of what the
store already holds, beside the wait for a late answer (from CHECK_RESERVE_SECONDS before the
deadline) and before a retry after a connection that broke off.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import logging
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import boto3
import botocore.config

from handler.bucket import BucketSettings
from handler.cancel import JobControl, current_control
from handler.errors import ErrorCode, JobError
from handler.fetch import resolve_public
from handler.s3_put import PutFailed, head_file, object_matches, put_file
from handler.settings import MAX_URL_EXPIRY_SECONDS
from model.utc import utc_now, utc_text

log = logging.getLogger(__name__)

KEY_PREFIX = "talking-head"
CONTENT_TYPE = "video/mp4"
S3_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
# AWS names the bucket's region when it was addressed in another (PermanentRedirect, an
# AuthorizationHeaderMalformed or AuthorizationQueryParametersError answer).
S3_ERROR_REGION = re.compile(
    rb"<Region>([a-z0-9-]{1,40})</Region>"
    rb"|<Endpoint>[^<]*?\.s3[.-]([a-z0-9-]{1,40})\.amazonaws\.com</Endpoint>"
)
MAX_CONNECT_SECONDS = 10.0
# A retry starts only with at least this much of the deadline left.
MIN_ATTEMPT_SECONDS = 1.0
FIRST_RETRY_PAUSE_SECONDS = 0.5
MAX_RETRY_PAUSE_SECONDS = 8.0
# A late answer is waited for until the deadline; from this long before it (at most a quarter of the
# deadline), a HEAD looks whether the store holds the object already.
CHECK_RESERVE_SECONDS = 5.0
# S3's answers that a later attempt may not get (throttling, a store's own trouble).
RETRYABLE_CODES = {
    "SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "Throttling",
}
ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken",
                "ExpiredToken", "AccountProblem"}


def base64_size(num_bytes: int) -> int:
    return 4 * ((num_bytes + 2) // 3)


def check_bucket_address(bucket: BucketSettings, allow_private: bool) -> None:
    """Before rendering: a job's own bucket (s3Config) must be on a public address, like any URL a job names."""
    if bucket.from_job and bucket.endpoint_url is not None:
        _resolve(bucket.endpoint_url, bucket, allow_private, ErrorCode.INVALID_INPUT)


def inline_result(video: Path) -> dict[str, Any]:
    return {"video_base64": base64.b64encode(video.read_bytes()).decode("ascii")}


def upload_result(
    video: Path, job_id: str, bucket: BucketSettings, expiry_seconds: int, timeout_seconds: float,
    allow_private: bool = False,
) -> dict[str, Any]:
    """Upload with an unguessable key within `timeout_seconds`, and return the presigned URL (never logged)."""
    now = utc_now()
    key = f"{new_key_prefix(job_id, now)}.mp4"
    with video.open("rb") as file:
        put_object(file, video.stat().st_size, key, CONTENT_TYPE, bucket, timeout_seconds, allow_private)
    return {
        "video_url": presign_url(bucket, key, expiry_seconds),
        "video_s3_key": key,
        "url_expires_at": expiry_time(now, expiry_seconds),
    }


def new_key_prefix(job_id: str, now: datetime.datetime) -> str:
    """The start of a job's object keys: dated, with the job id and a part no one can guess."""
    return f"{KEY_PREFIX}/{now:%Y/%m/%d}/{_safe(job_id)}-{secrets.token_urlsafe(18)}"


def expiry_time(now: datetime.datetime, expiry_seconds: int) -> str:
    return utc_text(now + datetime.timedelta(seconds=expiry_seconds))


def put_object(
    file: IO[bytes], size: int, key: str, content_type: str, bucket: BucketSettings, timeout_seconds: float,
    allow_private: bool = False, control: JobControl | None = None,
) -> None:
    """PUT `size` bytes of `file` at `key` within `timeout_seconds`, retrying what may pass later.

    The PUT goes to an address resolved here, once: for a job's own bucket it is checked to be
    public (unless `allow_private`), and the connection cannot be redirected elsewhere after it.
    A stop of `control` (default: the calling job thread's) raises JobCancelled at once.
    """
    control = control or current_control()
    started = time.monotonic()
    deadline = started + timeout_seconds
    put_url = _presign(bucket, key, "put_object", _put_url_lifetime(timeout_seconds), ContentType=content_type)
    head_url = _presign(bucket, key, "head_object", _put_url_lifetime(timeout_seconds))
    address = _resolve(put_url, bucket, allow_private, ErrorCode.UPLOAD_FAILED, deadline, control,
                       f"upload deadline ({timeout_seconds:g} s, UPLOAD_TIMEOUT_SECONDS)")

    def store_holds(md5: str, by: float) -> bool:
        try:
            return object_matches(head_file(head_url, address, by, MAX_CONNECT_SECONDS, control), size, md5)
        except PutFailed:
            return False

    check_at = deadline - min(CHECK_RESERVE_SECONDS, timeout_seconds / 4)
    attempt = 0
    while True:
        attempt += 1
        file.seek(0)
        failure = _put_once(put_url, address, file, size, content_type, deadline, control, store_holds, check_at)
        if failure is None:
            break
        if failure.sent_md5 and failure.kind == "broken" and store_holds(failure.sent_md5, deadline):
            log.info("upload to bucket %s: attempt %d got no answer, but the store holds the object; "
                     "it is not sent again", bucket.bucket_name, attempt)
            break
        pause = min(FIRST_RETRY_PAUSE_SECONDS * 2 ** (attempt - 1), MAX_RETRY_PAUSE_SECONDS)
        reason = failure.reason(bucket, timeout_seconds)
        if not (failure.retryable and time.monotonic() + pause + MIN_ATTEMPT_SECONDS < deadline):
            log.warning("upload to bucket %s failed after %.2f s and %d attempt(s): %s",
                        bucket.bucket_name, time.monotonic() - started, attempt, reason)
            raise JobError(ErrorCode.UPLOAD_FAILED, f"the video could not be uploaded: {reason}")
        log.info("upload to bucket %s: attempt %d failed (%s); retrying", bucket.bucket_name, attempt, reason)
        _pause(pause, control)
    log.info("uploaded %s to bucket %s in %.2f s", key, bucket.bucket_name, time.monotonic() - started)


def _pause(seconds: float, control: JobControl | None) -> None:
    """Wait `seconds` before a retry; a stop of `control` ends the wait with JobCancelled."""
    if control is None:
        time.sleep(seconds)
        return
    woken = threading.Event()
    with control.interrupting(woken.set):
        woken.wait(seconds)
    control.check()


def presign_url(bucket: BucketSettings, key: str, expiry_seconds: int) -> str:
    """A GET URL for the object; made locally (no request, nothing to wait for)."""
    return _presign(bucket, key, "get_object", expiry_seconds)


def _presign(bucket: BucketSettings, key: str, operation: str, expiry_seconds: int, **params: str) -> str:
    return _signer(bucket).generate_presigned_url(
        operation, Params={"Bucket": bucket.bucket_name, "Key": key, **params}, ExpiresIn=expiry_seconds,
    )


def _put_url_lifetime(timeout_seconds: float) -> int:
    # Only this upload uses it; a little past the deadline, for a clock that runs slow.
    return int(min(MAX_URL_EXPIRY_SECONDS, timeout_seconds + 60))


def _resolve(
    url: str, bucket: BucketSettings, allow_private: bool, code: ErrorCode, deadline: float | None = None,
    control: JobControl | None = None, deadline_name: str | None = None,
) -> str:
    """The address to upload to; the endpoint's own bucket may be anywhere, a job's must be public.
    The lookup ends by `deadline` (handler/fetch.py, `lookup`)."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname is not None, "an endpoint has a host (handler/bucket.py), and boto3 presigns on it"
    return resolve_public(
        parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80), bucket.fields.endpoint,
        allow_private or not bucket.from_job, code, "which this worker does not upload to; use a public S3 endpoint.",
        deadline=deadline, control=control, deadline_name=deadline_name,
    )


@dataclasses.dataclass(frozen=True)
class _Failure:
    """Why one attempt failed: no answer (`kind`), or S3's answer (`status`, `code`)."""

    kind: str
    status: int = 0
    code: str = ""
    #: the region AWS says the bucket is in, when it was addressed in another
    region: str = ""
    #: the MD5 of the body, when all of it was sent and no answer came: the store may hold it
    sent_md5: str | None = None

    @property
    def retryable(self) -> bool:
        if self.kind == "answer":
            # 501: the server does not do PUT at all, it is no S3 endpoint
            return (self.status >= 500 and self.status != 501) or self.status == 429 or self.code in RETRYABLE_CODES
        return True  # a refused or broken connection may work the next time; a timeout ends the loop anyway

    def reason(self, bucket: BucketSettings, timeout_seconds: float) -> str:
        """Why the upload failed, and what to check, in the user's words: never a secret or a class name."""
        fields, name, host = bucket.fields, bucket.bucket_name, bucket.host
        if self.kind == "timeout":
            return (f"{host} did not answer within the upload deadline ({timeout_seconds:g} s, "
                    f"UPLOAD_TIMEOUT_SECONDS); check {fields.endpoint}, or raise the deadline for very large videos.")
        if self.kind == "connect":
            return f"could not connect to {host}; check {fields.endpoint}."
        if self.kind == "broken":
            return f"the connection to {host} broke off; check {fields.endpoint}."
        answered = f"HTTP {self.status}" + (f" ({self.code})" if self.code else "")
        if self.code == "NoSuchBucket":
            return f"there is no bucket {name!r} at {host}; check {fields.bucket} (create the bucket first)."
        if self.region and self.region != bucket.region:
            return (f"bucket {name!r} is in region {self.region}, not {bucket.region}; name it in {fields.endpoint}: "
                    f"https://{name}.s3.{self.region}.amazonaws.com.")
        if self.code in ACCESS_CODES or self.status == 403:
            return (f"access to bucket {name!r} at {host} was denied ({answered}); check {fields.keys} "
                    "and that they may write to the bucket.")
        if self.status >= 500 and self.status != 501:
            return f"{host} kept answering {answered}; the store has trouble: try again later."
        return (f"{host} answered {answered}; check that {fields.endpoint} is an S3 endpoint "
                f"and {fields.bucket} a bucket in it.")


def _put_once(
    url: str, address: str, file: IO[bytes], size: int, content_type: str, deadline: float,
    control: JobControl | None, check: Callable[[str, float], bool], check_at: float,
) -> _Failure | None:
    try:
        answer = put_file(url, address, file, size, {"Content-Type": content_type}, deadline, MAX_CONNECT_SECONDS,
                          control, check, check_at)
    except PutFailed as failed:
        return _Failure(failed.kind, sent_md5=failed.sent_md5)
    if answer.found_by_check:
        log.info("no answer to the upload yet, but the store holds the object; it is not waited for")
    if 200 <= answer.status < 300:
        return None
    code = S3_ERROR_CODE.search(answer.body)
    region = S3_ERROR_REGION.search(answer.body)
    return _Failure(
        "answer", answer.status, code.group(1).decode("ascii", "replace") if code else "",
        (region.group(1) or region.group(2)).decode("ascii") if region else "",
    )


@functools.lru_cache(maxsize=8)
def _signer(bucket: BucketSettings):
    """One client per bucket, reused by later jobs, that only signs: it sends nothing."""
    return boto3.client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        aws_access_key_id=bucket.access_key_id,
        aws_secret_access_key=bucket.secret_access_key,
        region_name=bucket.region,
        config=botocore.config.Config(
            signature_version="s3v4", s3={"addressing_style": bucket.addressing},
            # Many S3-compatible stores refuse the checksums newer botocore adds by default.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        ),
    )


def _safe(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in job_id)[:64] or "job"
