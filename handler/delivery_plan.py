"""Where a job's video goes, decided once, before anything is fetched or rendered (docs/CONTRACT.md,
"Job output" and "Streaming"): inline, the bucket, the /stream items, or the always-on server's
download URL; and the refusals of a job that has nowhere to go.
"""

from __future__ import annotations

import dataclasses
import enum

from handler.bucket import BucketSettings
from handler.delivery import base64_size
from handler.errors import ErrorCode, JobError

# Room for the other result fields around the base64 string.
RESULT_OVERHEAD_BYTES = 4096


class Destination(enum.StrEnum):
    """Where the whole video goes; the value is the word the job's log line uses."""

    #: base64 in the result (`video_base64`)
    INLINE = "inline"
    #: one MP4 uploaded to the bucket (`video_url`)
    BUCKET = "uploaded"
    #: nowhere as one file: the /stream items already are the video
    STREAM_ITEMS = "streamed"
    #: only at the always-on server's `download_url`
    SERVER_DOWNLOAD = "kept"


@dataclasses.dataclass(frozen=True)
class InlineLimit:
    """The largest MP4 that goes back inline: its base64 and the other fields within `max_result_bytes`."""

    max_result_bytes: int

    def check(self, video_bytes: int, so_far: str = "") -> None:
        """OUTPUT_TOO_LARGE when a video of this many bytes (or more) cannot go back inline.

        `so_far` (" after 75 of 1500 frames") says the video was stopped while it was still growing.
        """
        if base64_size(video_bytes) + RESULT_OVERHEAD_BYTES <= self.max_result_bytes:
            return
        size = f"reached {video_bytes / 1e6:.2f} MB{so_far}" if so_far else f"is {video_bytes / 1e6:.2f} MB"
        raise JobError(
            ErrorCode.OUTPUT_TOO_LARGE,
            f"the video {size}, too large to return inline (limit about "
            f"{(self.max_result_bytes - RESULT_OVERHEAD_BYTES) * 3 / 4 / 1e6:.2f} MB); configure a bucket "
            "(BUCKET_* variables or s3Config) and use output_type 's3' or 'auto'.",
        )


@dataclasses.dataclass(frozen=True)
class DeliveryPlan:
    destination: Destination
    #: the bucket the whole MP4 is uploaded to: set exactly when the destination is BUCKET
    upload_bucket: BucketSettings | None = None
    #: set exactly when the destination is INLINE: generation stops once the video cannot fit
    inline_limit: InlineLimit | None = None
    #: a stream job's segments leave as /stream items (a generator handler, STREAM_RESULTS)
    segment_items: bool = False
    #: a stream job's segments, and their HLS playlist, are uploaded to this bucket as they are made
    playlist_bucket: BucketSettings | None = None

    @property
    def streams(self) -> bool:
        """The video also leaves in segments while it renders."""
        return self.segment_items or self.playlist_bucket is not None

    @property
    def bucket(self) -> BucketSettings | None:
        """The bucket the job writes to, if any: a job's own must be on a public address."""
        return self.upload_bucket or self.playlist_bucket

    @property
    def makes_mp4(self) -> bool:
        """A stream job's segments are joined into one MP4 too, unless they are the whole delivery."""
        return self.destination is not Destination.STREAM_ITEMS


def plan_delivery(
    output_type: str, stream: bool, job_bucket: BucketSettings | None, endpoint_bucket: BucketSettings | None,
    *, sends_stream_items: bool, kept_by_server: bool, max_inline_result_bytes: int,
) -> DeliveryPlan:
    """The job's delivery, or INVALID_INPUT for a job that cannot be delivered as asked.

    `job_bucket` (the job's s3Config) overrides `endpoint_bucket` (BUCKET_*). `sends_stream_items`:
    the front door takes /stream items (RunPod's generator handler). `kept_by_server`: the
    always-on server keeps the MP4 at a download URL, so output_type "auto" without a bucket needs
    no other way out.
    """
    bucket = job_bucket or endpoint_bucket
    if output_type == "s3" and bucket is None:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            "output_type is 's3' but no bucket is configured; "
            "set the BUCKET_* variables on the endpoint or send s3Config.",
        )
    segment_items = stream and sends_stream_items
    if stream and not segment_items and bucket is None:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            "stream is true, but this endpoint can neither send segments through /stream/{id} "
            "(set STREAM_RESULTS=1 on the endpoint) nor put them in a bucket (set the BUCKET_* variables "
            "or send s3Config); send the job without stream to get the whole video at the end.",
        )
    if segment_items and output_type == "base64":
        raise JobError(
            ErrorCode.INVALID_INPUT,
            "output_type 'base64' with stream true would send the video twice, and the last stream item "
            "cannot hold it (RunPod's 1 MB limit); use output_type 'auto' (segments only, or also an "
            "uploaded MP4 when a bucket is set) or 's3'.",
        )
    playlist_bucket = bucket if stream else None
    if output_type == "s3" or (output_type == "auto" and bucket is not None):
        return DeliveryPlan(Destination.BUCKET, upload_bucket=bucket, segment_items=segment_items,
                            playlist_bucket=playlist_bucket)
    if output_type == "auto" and kept_by_server:
        destination = Destination.SERVER_DOWNLOAD
    elif segment_items:
        destination = Destination.STREAM_ITEMS  # the segments are the video
    else:
        return DeliveryPlan(Destination.INLINE, inline_limit=InlineLimit(max_inline_result_bytes),
                            segment_items=segment_items, playlist_bucket=playlist_bucket)
    return DeliveryPlan(destination, segment_items=segment_items, playlist_bucket=playlist_bucket)
