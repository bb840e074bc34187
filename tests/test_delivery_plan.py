"""The delivery plan (handler/delivery_plan.py): every destination, and every refusal, of one job,
decided by the one function before anything is fetched or rendered (docs/CONTRACT.md, "Job
output" and "Streaming")."""

from __future__ import annotations

import pytest

from handler.bucket import BucketSettings
from handler.delivery_plan import RESULT_OVERHEAD_BYTES, DeliveryPlan, Destination, InlineLimit, plan_delivery
from handler.errors import ErrorCode, JobError

ENDPOINT_BUCKET = BucketSettings("https://s3.eu-west-1.amazonaws.com", "AKIAENDPOINT", "secret", "endpoint-bucket")
JOB_BUCKET = BucketSettings("https://s3.eu-west-1.amazonaws.com", "AKIAJOB", "secret", "job-bucket", from_job=True)
INLINE_LIMIT = 10_000_000


def _plan(
    output_type: str = "auto", stream: bool = False, job_bucket: BucketSettings | None = None,
    endpoint_bucket: BucketSettings | None = None, sends_stream_items: bool = False, kept_by_server: bool = False,
) -> DeliveryPlan:
    return plan_delivery(output_type, stream, job_bucket, endpoint_bucket, sends_stream_items=sends_stream_items,
                         kept_by_server=kept_by_server, max_inline_result_bytes=INLINE_LIMIT)


def _refusal(**job) -> str:
    with pytest.raises(JobError) as refused:
        _plan(**job)
    assert refused.value.code is ErrorCode.INVALID_INPUT
    return refused.value.message


@pytest.mark.parametrize("output_type", ["auto", "base64"])
def test_without_a_bucket_the_video_goes_inline_under_the_limit(output_type):
    plan = _plan(output_type)
    assert plan == DeliveryPlan(Destination.INLINE, inline_limit=InlineLimit(INLINE_LIMIT))
    assert not plan.streams and plan.bucket is None and plan.makes_mp4


def test_base64_goes_inline_even_with_a_bucket():
    plan = _plan("base64", endpoint_bucket=ENDPOINT_BUCKET)
    assert plan.destination is Destination.INLINE and plan.upload_bucket is None and plan.bucket is None


@pytest.mark.parametrize("output_type", ["auto", "s3"])
def test_the_endpoints_bucket_takes_the_mp4(output_type):
    plan = _plan(output_type, endpoint_bucket=ENDPOINT_BUCKET)
    assert plan == DeliveryPlan(Destination.BUCKET, upload_bucket=ENDPOINT_BUCKET)
    assert plan.inline_limit is None and plan.bucket is ENDPOINT_BUCKET


@pytest.mark.parametrize("endpoint_bucket", [None, ENDPOINT_BUCKET])
def test_the_jobs_own_bucket_overrides_the_endpoints(endpoint_bucket):
    plan = _plan("auto", job_bucket=JOB_BUCKET, endpoint_bucket=endpoint_bucket)
    assert plan == DeliveryPlan(Destination.BUCKET, upload_bucket=JOB_BUCKET)


def test_the_server_keeps_an_auto_video_without_a_bucket_at_its_download_url():
    plan = _plan("auto", kept_by_server=True)
    assert plan == DeliveryPlan(Destination.SERVER_DOWNLOAD)
    assert plan.inline_limit is None and plan.makes_mp4


def test_the_server_still_delivers_what_base64_and_s3_ask_for():
    assert _plan("base64", kept_by_server=True).destination is Destination.INLINE
    assert _plan("s3", endpoint_bucket=ENDPOINT_BUCKET, kept_by_server=True).destination is Destination.BUCKET
    assert _plan("auto", endpoint_bucket=ENDPOINT_BUCKET, kept_by_server=True).destination is Destination.BUCKET


def test_without_stream_no_segments_leave_even_on_a_streaming_endpoint():
    plan = _plan("auto", sends_stream_items=True)
    assert plan == DeliveryPlan(Destination.INLINE, inline_limit=InlineLimit(INLINE_LIMIT))


def test_stream_results_without_a_bucket_the_items_are_the_video():
    plan = _plan("auto", stream=True, sends_stream_items=True)
    assert plan == DeliveryPlan(Destination.STREAM_ITEMS, segment_items=True)
    assert plan.streams and not plan.makes_mp4 and plan.inline_limit is None


def test_stream_results_with_a_bucket_sends_items_and_uploads_playlist_and_mp4():
    plan = _plan("auto", stream=True, endpoint_bucket=ENDPOINT_BUCKET, sends_stream_items=True)
    assert plan == DeliveryPlan(Destination.BUCKET, upload_bucket=ENDPOINT_BUCKET, segment_items=True,
                                playlist_bucket=ENDPOINT_BUCKET)
    assert plan.makes_mp4


@pytest.mark.parametrize("job_bucket, endpoint_bucket", [(None, ENDPOINT_BUCKET), (JOB_BUCKET, ENDPOINT_BUCKET),
                                                         (JOB_BUCKET, None)])
def test_stream_via_the_bucket_puts_segments_and_playlist_there(job_bucket, endpoint_bucket):
    plan = _plan("auto", stream=True, job_bucket=job_bucket, endpoint_bucket=endpoint_bucket)
    bucket = job_bucket or endpoint_bucket
    assert plan == DeliveryPlan(Destination.BUCKET, upload_bucket=bucket, playlist_bucket=bucket)
    assert plan.streams and not plan.segment_items and plan.bucket is bucket


def test_stream_via_the_bucket_with_base64_sends_the_mp4_inline():
    plan = _plan("base64", stream=True, endpoint_bucket=ENDPOINT_BUCKET)
    assert plan == DeliveryPlan(Destination.INLINE, inline_limit=InlineLimit(INLINE_LIMIT),
                                playlist_bucket=ENDPOINT_BUCKET)
    assert plan.bucket is ENDPOINT_BUCKET, "the playlist's bucket is written to, so it is checked too"


@pytest.mark.parametrize("job", [{}, {"stream": True}, {"sends_stream_items": True}, {"kept_by_server": True}])
def test_s3_without_a_bucket_is_refused(job):
    assert _refusal(output_type="s3", **job) == (
        "output_type is 's3' but no bucket is configured; set the BUCKET_* variables on the endpoint or send s3Config."
    )


@pytest.mark.parametrize("output_type", ["auto", "base64"])
@pytest.mark.parametrize("kept_by_server", [False, True])
def test_stream_with_nowhere_to_send_segments_is_refused(output_type, kept_by_server):
    message = _refusal(output_type=output_type, stream=True, kept_by_server=kept_by_server)
    assert message.startswith("stream is true, but this endpoint can neither send segments through /stream/{id} "
                              "(set STREAM_RESULTS=1 on the endpoint) nor put them in a bucket")


@pytest.mark.parametrize("endpoint_bucket", [None, ENDPOINT_BUCKET])
def test_base64_with_stream_items_is_refused(endpoint_bucket):
    message = _refusal(output_type="base64", stream=True, endpoint_bucket=endpoint_bucket, sends_stream_items=True)
    assert message.startswith("output_type 'base64' with stream true would send the video twice")


def test_the_inline_limit_counts_base64_and_the_results_other_fields():
    limit = InlineLimit(4 * 1000 + RESULT_OVERHEAD_BYTES)
    limit.check(3000)  # 4000 bytes of base64: exactly at the limit
    with pytest.raises(JobError) as refused:
        limit.check(3001)
    assert refused.value.code is ErrorCode.OUTPUT_TOO_LARGE
    assert refused.value.message.startswith("the video is 0.00 MB, too large to return inline (limit about 0.00 MB)")
    growing = r"the video reached 8\.00 MB after 75 of 1500 frames, too large to return inline \(limit about 7\.50 MB\)"
    with pytest.raises(JobError, match=growing):
        InlineLimit(INLINE_LIMIT).check(2_000_000 * 4, " after 75 of 1500 frames")
