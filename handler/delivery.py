"""Hand the MP4 to the user: inline base64, or an S3 upload with a presigned GET URL."""

from __future__ import annotations

import base64
import datetime
import functools
import logging
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from handler.errors import ErrorCode, JobError
from handler.settings import BucketSettings

log = logging.getLogger(__name__)

# Room for the other result fields around the base64 string.
RESULT_OVERHEAD_BYTES = 4096
KEY_PREFIX = "talking-head"


def base64_size(num_bytes: int) -> int:
    return 4 * ((num_bytes + 2) // 3)


def choose_destination(output_type: str, video_bytes: int, bucket: BucketSettings | None, max_result_bytes: int) -> str:
    """"base64" or "s3", or a JobError when neither can deliver this video."""
    fits_inline = base64_size(video_bytes) + RESULT_OVERHEAD_BYTES <= max_result_bytes
    if output_type == "s3" or (output_type == "auto" and bucket is not None):
        if bucket is None:
            raise JobError(
                ErrorCode.INVALID_INPUT,
                "output_type is 's3' but no bucket is configured; set the BUCKET_* variables on the endpoint or send s3Config.",
            )
        return "s3"
    if not fits_inline:
        raise JobError(
            ErrorCode.OUTPUT_TOO_LARGE,
            f"the video is {video_bytes / 1e6:.1f} MB, too large to return inline (limit about "
            f"{(max_result_bytes - RESULT_OVERHEAD_BYTES) * 3 / 4 / 1e6:.1f} MB); configure a bucket "
            "(BUCKET_* variables or s3Config) and use output_type 's3' or 'auto'.",
        )
    return "base64"


def inline_result(video: Path) -> dict[str, Any]:
    return {"video_base64": base64.b64encode(video.read_bytes()).decode("ascii")}


def upload_result(video: Path, job_id: str, bucket: BucketSettings, expiry_seconds: int) -> dict[str, Any]:
    """Upload with an unguessable key and return the presigned URL (never logged)."""
    client = s3_client(bucket)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = f"{KEY_PREFIX}/{now:%Y/%m/%d}/{_safe(job_id)}-{secrets.token_urlsafe(18)}.mp4"
    try:
        client.upload_file(
            str(video), bucket.bucket_name, key, ExtraArgs={"ContentType": "video/mp4"},
        )
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket.bucket_name, "Key": key}, ExpiresIn=expiry_seconds,
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, boto3.exceptions.S3UploadFailedError) as error:
        log.warning("upload to bucket %s failed: %s", bucket.bucket_name, type(error).__name__)
        raise JobError(
            ErrorCode.UPLOAD_FAILED,
            f"the video could not be uploaded to bucket {bucket.bucket_name!r} ({_reason(error)}); "
            "check the bucket name, endpoint URL and access keys.",
        ) from None
    log.info("uploaded %s to bucket %s", key, bucket.bucket_name)
    expires_at = now + datetime.timedelta(seconds=expiry_seconds)
    return {
        "video_url": url,
        "video_s3_key": key,
        "url_expires_at": expires_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


@functools.lru_cache(maxsize=8)
def s3_client(bucket: BucketSettings):
    """One client per bucket configuration, made on first use and reused by later jobs."""
    endpoint = bucket.endpoint_url
    host = (urllib.parse.urlsplit(endpoint).hostname or "") if endpoint else ""
    # AWS itself wants virtual-hosted addressing; most other S3-compatible stores want path style.
    addressing = "virtual" if not endpoint or host.endswith("amazonaws.com") else "path"
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=bucket.access_key_id,
        aws_secret_access_key=bucket.secret_access_key,
        region_name=_region(host),
        config=botocore.config.Config(
            signature_version="s3v4", s3={"addressing_style": addressing},
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60,
        ),
    )


def _region(host: str) -> str:
    parts = host.split(".")
    if host.endswith("amazonaws.com") and len(parts) >= 4 and parts[-3] not in ("s3", "s3-accelerate"):
        return parts[-3]
    return "us-east-1"


def _reason(error: Exception) -> str:
    if isinstance(error, botocore.exceptions.ClientError):
        return error.response.get("Error", {}).get("Code", "ClientError")
    return type(error).__name__


def _safe(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in job_id)[:64] or "job"
