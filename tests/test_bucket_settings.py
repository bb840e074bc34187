"""The output bucket: both forms RunPod documents, refused settings at start, a job's own bucket
checked when it is parsed and guarded like any address a job names, all before rendering."""

from __future__ import annotations

import base64
import io
import logging
import urllib.parse

import boto3
import numpy as np
import pytest
import soundfile

from handler.bucket import ENV_FIELDS, BucketAddressError, make_bucket
from handler.delivery import presign_url
from handler.sample import SAMPLE_SPEECH, sample_job_input
from handler.settings import SettingsError, WorkerSettings
from handler.startup import start_worker
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, TEST_BUCKET


@pytest.mark.parametrize("endpoint, name, expected", [
    # RunPod's own example: the bucket in the host
    ("https://my-bucket.s3.eu-west-1.amazonaws.com", None,
     ("https://s3.eu-west-1.amazonaws.com", "my-bucket", "eu-west-1", "virtual")),
    ("https://my-bucket.s3.amazonaws.com", "my-bucket",
     ("https://s3.amazonaws.com", "my-bucket", "us-east-1", "virtual")),
    ("https://my-bucket.s3-eu-west-2.amazonaws.com/", None,
     ("https://s3-eu-west-2.amazonaws.com", "my-bucket", "eu-west-2", "virtual")),
    ("https://my.dotted.bucket.s3.us-west-2.amazonaws.com", None,
     ("https://s3.us-west-2.amazonaws.com", "my.dotted.bucket", "us-west-2", "path")),
    ("https://media.s3.us-west-004.backblazeb2.com", None,
     ("https://s3.us-west-004.backblazeb2.com", "media", "us-west-004", "path")),
    ("https://media.nyc3.digitaloceanspaces.com", None,
     ("https://nyc3.digitaloceanspaces.com", "media", "nyc3", "path")),
    # the bucket in the path
    ("https://s3.eu-west-1.amazonaws.com/my-bucket", None,
     ("https://s3.eu-west-1.amazonaws.com", "my-bucket", "eu-west-1", "virtual")),
    ("http://minio.internal:9000/renders/", None, ("http://minio.internal:9000", "renders", "us-east-1", "path")),
    # a bare endpoint and the name apart
    ("https://s3.eu-central-1.amazonaws.com", "my-bucket",
     ("https://s3.eu-central-1.amazonaws.com", "my-bucket", "eu-central-1", "virtual")),
    ("https://abc123.r2.cloudflarestorage.com", "renders",
     ("https://abc123.r2.cloudflarestorage.com", "renders", "us-east-1", "path")),
    ("http://[::1]:9000", "renders", ("http://[::1]:9000", "renders", "us-east-1", "path")),
    # outside AWS, a host that looks like `<bucket>.s3.` is the store's own when the bucket is named apart
    ("https://files.s3.example.net", "renders", ("https://files.s3.example.net", "renders", "us-east-1", "path")),
    (None, "my-bucket", (None, "my-bucket", "us-east-1", "virtual")),
])
def test_every_documented_bucket_form(endpoint, name, expected):
    bucket = make_bucket(endpoint, name, "key-id", "secret", ENV_FIELDS)
    assert (bucket.endpoint_url, bucket.bucket_name, bucket.region, bucket.addressing) == expected
    assert "secret" not in repr(bucket)


def test_the_bucket_in_the_host_is_signed_for_its_own_host_and_region():
    """The request a client would send for RunPod's example form: the bucket's own host, its region."""
    bucket = make_bucket("https://my-bucket.s3.eu-west-1.amazonaws.com", None, "AKIAEXAMPLE", "secret", ENV_FIELDS)
    url = urllib.parse.urlsplit(presign_url(bucket, "talking-head/x.mp4", 600))
    query = urllib.parse.parse_qs(url.query)
    assert (url.scheme, url.hostname, url.path) == (
        "https", "my-bucket.s3.eu-west-1.amazonaws.com", "/talking-head/x.mp4"
    )
    assert query["X-Amz-Credential"][0].split("/")[2:4] == ["eu-west-1", "s3"]


@pytest.mark.parametrize("endpoint, name, message", [
    ("not a url", "b", "BUCKET_ENDPOINT_URL 'not a url' is not an http(s) URL with a host"),
    ("ftp://s3.example.com", "b", "BUCKET_ENDPOINT_URL 'ftp://s3.example.com' is not an http(s) URL with a host"),
    ("https://s3.example.com:99999", "b", "BUCKET_ENDPOINT_URL is not a valid URL"),
    ("https://key:hunter2@s3.example.com", "b",
     "BUCKET_ENDPOINT_URL must not carry credentials; put the keys in BUCKET_ACCESS_KEY_ID"),
    ("https://s3.example.com/b?x=1", None, "has a query or fragment"),
    ("https://s3.example.com/b/prefix", None, "has a path beyond the bucket"),
    ("https://a.s3.amazonaws.com/b", None, "names a bucket in its host and in its path"),
    ("https://a.s3.eu-west-1.amazonaws.com", "b", "BUCKET_ENDPOINT_URL names the bucket 'a' but BUCKET_NAME is 'b'"),
    ("https://s3.eu-west-1.amazonaws.com", None,
     "no bucket is named: set BUCKET_NAME, or put the bucket in BUCKET_ENDPOINT_URL"),
    (None, "my bucket", "BUCKET_NAME 'my bucket' is not a bucket name"),
])
def test_an_endpoint_that_cannot_address_a_bucket_is_refused_naming_the_field(endpoint, name, message):
    with pytest.raises(BucketAddressError) as refused:
        make_bucket(endpoint, name, "key-id", "secret", ENV_FIELDS)
    assert message in str(refused.value)
    assert "hunter2" not in str(refused.value)


KEYS = {"BUCKET_ACCESS_KEY_ID": "k", "BUCKET_SECRET_ACCESS_KEY": "s"}


@pytest.mark.parametrize("env, message", [
    ({**KEYS, "BUCKET_ENDPOINT_URL": "s3.amazonaws.com/my-bucket"},
     "BUCKET_ENDPOINT_URL 's3.amazonaws.com/my-bucket' is not an http(s) URL with a host; use e.g. https://"),
    ({**KEYS, "BUCKET_ENDPOINT_URL": "https://s3.example.com"},
     "no bucket is named: set BUCKET_NAME, or put the bucket in"),
    ({"BUCKET_ENDPOINT_URL": "https://my-bucket.s3.eu-west-1.amazonaws.com"},
     "the S3 bucket is half configured: set BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY as well."),
    ({"BUCKET_NAME": "b", "BUCKET_ACCESS_KEY_ID": "k"},
     "the S3 bucket is half configured: set BUCKET_SECRET_ACCESS_KEY as well."),
    ({"MAX_AUDIO_SECONDS": "inf"}, "MAX_AUDIO_SECONDS='inf' must be a positive, finite number."),
    ({"MAX_AUDIO_SECONDS": "nan"}, "MAX_AUDIO_SECONDS='nan' must be a positive, finite number."),
    ({"FETCH_TIMEOUT_SECONDS": "Infinity"}, "FETCH_TIMEOUT_SECONDS='Infinity' must be a positive, finite number."),
    ({"UPLOAD_TIMEOUT_SECONDS": "inf"}, "UPLOAD_TIMEOUT_SECONDS='inf' must be a positive, finite number."),
    ({"UPLOAD_TIMEOUT_SECONDS": "0"}, "UPLOAD_TIMEOUT_SECONDS='0' must be a positive, finite number."),
    ({"UPLOAD_TIMEOUT_SECONDS": "two minutes"}, "UPLOAD_TIMEOUT_SECONDS='two minutes' is not a number."),
])
def test_a_setting_that_cannot_work_is_refused_at_start_naming_the_variable(env, message):
    with pytest.raises(SettingsError) as refused:
        WorkerSettings.from_env(env)
    assert str(refused.value).startswith(message), refused.value
    error = start_worker({"MODEL_BACKEND": "lite", **env}).handle({"id": "j", "input": sample_job_input()})["error"]
    assert error.startswith(f"INTERNAL: the endpoint is misconfigured: {message}"), error
    assert error.endswith("Fix the endpoint's environment variables."), error


def test_upload_timeout_default_and_value():
    assert WorkerSettings.from_env({}).upload_timeout_seconds == 120.0
    assert WorkerSettings.from_env({"UPLOAD_TIMEOUT_SECONDS": "7.5"}).upload_timeout_seconds == 7.5


# --- the forms against a real S3 server (moto on 127.0.0.1) -----------------------------------

def _objects(endpoint: str, bucket: str) -> set[str]:
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                          aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")
    return {item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


@pytest.mark.parametrize("form", ["bucket in the path", "bare endpoint and BUCKET_NAME"])
def test_both_forms_upload_to_the_bucket(s3_server, form):
    env = {"MODEL_BACKEND": "lite", "BUCKET_ACCESS_KEY_ID": S3_ACCESS_KEY, "BUCKET_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    if form == "bucket in the path":
        env["BUCKET_ENDPOINT_URL"] = f"{s3_server}/{TEST_BUCKET}"
    else:
        env.update(BUCKET_ENDPOINT_URL=s3_server, BUCKET_NAME=TEST_BUCKET)
    job_input = sample_job_input(output_type="auto", resolution="128*128")
    output = start_worker(env).handle({"id": "form", "input": job_input})
    assert output.get("success"), output
    assert output["video_s3_key"] in _objects(s3_server, TEST_BUCKET)


# --- a job's own bucket: checked when parsed, guarded before rendering ------------------------

@pytest.fixture(scope="module")
def guarded_worker():
    """No ALLOW_PRIVATE_URLS: a job may not name a private address, for its media or its bucket."""
    return start_worker({"MODEL_BACKEND": "lite"})


def _job_with_bucket(endpoint: str, bucket: str = "renders") -> dict:
    s3_config = {"accessId": "k", "accessSecret": "a-job-secret", "bucketName": bucket, "endpointUrl": endpoint}
    return {"id": "guarded", "input": sample_job_input(output_type="s3"), "s3Config": s3_config}


@pytest.mark.parametrize("endpoint, address", [
    ("http://127.0.0.1:9000", "127.0.0.1"),
    ("http://169.254.169.254", "169.254.169.254"),
    ("https://10.0.0.8", "10.0.0.8"),
    ("http://[::1]:9000", "::1"),
    ("http://localhost:9000", ""),  # 127.0.0.1 or ::1, whichever resolves first
    ("http://100.64.0.1", "100.64.0.1"),
])
def test_a_jobs_bucket_on_a_private_address_is_refused_before_rendering(guarded_worker, caplog, endpoint, address):
    with caplog.at_level(logging.INFO):
        error = guarded_worker.handle(_job_with_bucket(endpoint))["error"]
    assert error.startswith(f"INVALID_INPUT: s3Config.endpointUrl points to a non-public address ({address}"), error
    assert "which this worker does not upload to; use a public S3 endpoint." in error
    # the log, not a stopwatch, shows that it ended before the media: a busy machine cannot change it
    assert "progress" not in caplog.text, "nothing was decoded or rendered"


@pytest.mark.parametrize("endpoint, bucket, message", [
    ("not-a-url", "renders", "INVALID_INPUT: s3Config.endpointUrl 'not-a-url' is not an http(s) URL with a host"),
    ("https://u:p@s3.example.com", "renders",
     "INVALID_INPUT: s3Config.endpointUrl must not carry credentials; put the keys in s3Config.accessId"),
    ("https://a.s3.eu-west-1.amazonaws.com", "b",
     "INVALID_INPUT: s3Config.endpointUrl names the bucket 'a' but s3Config.bucketName is 'b'"),
    ("https://s3.example.com", "bad/name", "INVALID_INPUT: s3Config.bucketName 'bad/name' is not a bucket name"),
])
def test_a_jobs_malformed_bucket_is_refused_when_parsed(guarded_worker, endpoint, bucket, message):
    error = guarded_worker.handle(_job_with_bucket(endpoint, bucket))["error"]
    assert error.startswith(message), error
    assert "a-job-secret" not in error


def test_output_s3_without_a_bucket_fails_before_rendering(guarded_worker, caplog):
    with caplog.at_level(logging.INFO):
        error = guarded_worker.handle({"id": "no-bucket", "input": sample_job_input(output_type="s3")})["error"]
    assert error.startswith("INVALID_INPUT: output_type is 's3' but no bucket is configured"), error
    assert "progress" not in caplog.text


def test_a_job_that_outgrows_the_inline_limit_stops_as_soon_as_that_is_certain():
    """No bucket: once the MP4 being written is past the inline limit, generation stops. (ffmpeg
    writes the file some seconds of video behind the frames it is given: a lower bound.)"""
    speech, rate = soundfile.read(SAMPLE_SPEECH, dtype="float32")
    longer = io.BytesIO()
    soundfile.write(longer, np.tile(speech, 5), rate, format="WAV")  # 38.6 s: 965 frames
    worker = start_worker({"MODEL_BACKEND": "lite", "MAX_INLINE_RESULT_BYTES": "60000"})
    job_input = sample_job_input(resolution="256*256", audio_file=base64.b64encode(longer.getvalue()).decode())
    error = worker.handle({"id": "big", "input": job_input})["error"]
    assert error.startswith("OUTPUT_TOO_LARGE: the video reached "), error
    written, total = map(int, error.split(" after ")[1].split(" frames")[0].split(" of "))
    assert total == 965 and written < total, error
    assert "limit about 0.04 MB" in error and "configure a bucket" in error
