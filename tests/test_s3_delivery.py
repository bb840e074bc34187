"""Delivery to S3 through a real S3 HTTP server on 127.0.0.1 (moto), and the inline size guard."""

from __future__ import annotations

import base64
import datetime
import logging

import boto3
import pytest
import requests

from handler.sample import sample_job_input
from handler.startup import start_worker
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, TEST_BUCKET, WorkerProcess
from tests.mp4_facts import mp4_facts


def _s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                        aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")


def test_auto_uploads_when_a_bucket_is_configured(worker, s3_server, tmp_path):
    reply = worker.runsync(sample_job_input(output_type="auto", resolution="128*128"))
    assert reply["status"] == "COMPLETED", reply
    output = reply["output"]
    assert "video_base64" not in output
    key = output["video_s3_key"]
    token = key.split(f"{output['request_id']}-", 1)[1].removesuffix(".mp4")
    assert key.endswith(".mp4") and len(token) >= 24, "keys must be unguessable"

    downloaded = requests.get(output["video_url"], timeout=30)
    assert downloaded.status_code == 200
    stored = _s3(s3_server).get_object(Bucket=TEST_BUCKET, Key=key)
    assert downloaded.content == stored["Body"].read()
    assert stored["ContentType"] == "video/mp4"
    assert len(downloaded.content) == output["file_size_bytes"]
    path = tmp_path / "uploaded.mp4"
    path.write_bytes(downloaded.content)
    assert mp4_facts(path).num_frames == output["num_frames"]

    expires = datetime.datetime.fromisoformat(output["url_expires_at"].replace("Z", "+00:00"))
    remaining = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
    assert 500 < remaining <= 600
    assert "X-Amz-Expires=600" in output["video_url"]


# RunPod puts `s3Config` beside `input` on the job; the SDK's local server drops it, so these
# jobs go through the worker's handler in-process (the upload still crosses HTTP to S3). The S3
# server is on 127.0.0.1, which a job's own endpoint may name only with ALLOW_PRIVATE_URLS.
@pytest.fixture(scope="module")
def bucketless_worker():
    return start_worker({"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1"})


def test_job_s3_config_overrides_the_environment(bucketless_worker, s3_server):
    _s3(s3_server).create_bucket(Bucket="per-job-bucket")
    s3_config = {"accessId": S3_ACCESS_KEY, "accessSecret": S3_SECRET_KEY,
                 "bucketName": "per-job-bucket", "endpointUrl": s3_server}
    job = {"id": "job-1", "input": sample_job_input(output_type="auto", resolution="128*128"), "s3Config": s3_config}
    output = bucketless_worker.handle(job)
    assert output.get("success"), output
    key = output["video_s3_key"]
    assert _s3(s3_server).head_object(Bucket="per-job-bucket", Key=key)["ContentLength"] == output["file_size_bytes"]
    assert requests.get(output["video_url"], timeout=30).status_code == 200


def test_upload_failure_is_clear_and_secret_free(bucketless_worker, s3_server, caplog):
    s3_config = {"accessId": S3_ACCESS_KEY, "accessSecret": "a-secret-that-must-not-leak",
                 "bucketName": "no-such-bucket", "endpointUrl": s3_server}
    job = {"id": "job-2", "input": sample_job_input(output_type="s3", resolution="128*128"), "s3Config": s3_config}
    with caplog.at_level(logging.DEBUG):
        output = bucketless_worker.handle(job)
    assert output["error"].startswith("UPLOAD_FAILED: ") and "no-such-bucket" in output["error"]
    assert "a-secret-that-must-not-leak" not in output["error"] + caplog.text


def test_malformed_s3_config(bucketless_worker):
    job = {"id": "job-3", "input": sample_job_input(), "s3Config": {"accessId": "x"}}
    error = bucketless_worker.handle(job)["error"]
    assert error.startswith("INVALID_INPUT: s3Config must be an object")


def test_base64_still_available_with_a_bucket(worker):
    reply = worker.runsync(sample_job_input(output_type="base64", resolution="128*128"))
    assert reply["status"] == "COMPLETED"
    assert base64.b64decode(reply["output"]["video_base64"])[4:8] == b"ftyp"


def test_logs_hold_no_secret_and_no_presigned_url(worker):
    reply = worker.runsync(sample_job_input(output_type="s3", resolution="128*128"))
    url = reply["output"]["video_url"]
    log = worker.log()
    assert "progress" in log or "done" in log, "the worker does log"
    assert S3_SECRET_KEY not in log and "a-secret-that-must-not-leak" not in log
    assert url not in log and "X-Amz-Signature" not in log


def test_inline_output_over_the_limit_fails_instead_of_vanishing(tmp_path_factory):
    process = WorkerProcess({"MODEL_BACKEND": "lite", "MAX_INLINE_RESULT_BYTES": "20000"},
                            tmp_path_factory.mktemp("small-limit-worker"))
    try:
        reply = process.runsync(sample_job_input(resolution="256*256"))
        assert reply["status"] == "FAILED"
        assert reply["error"].startswith("OUTPUT_TOO_LARGE: ") and "bucket" in reply["error"]
        assert list(process.tmpdir.rglob("*")) == []
    finally:
        process.stop()
