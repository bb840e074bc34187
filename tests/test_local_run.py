"""`python -m handler` in a folder with a `test_input.json` (the README's local run): the SDK's test
mode runs that one job. Its log holds no media and no presigned URL at any log level, and a
SIGTERM while it renders still removes the job's files."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import soundfile

from handler.sample import sample_job_input
from tests.conftest import ASSETS, ROOT, S3_ACCESS_KEY, S3_SECRET_KEY, TEST_BUCKET

# base64 (or a signature) this long never occurs in an honest log line
LONG_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{120,}")


def _start(workdir: Path, job_input: dict, env: dict[str, str]) -> tuple[subprocess.Popen, Path, Path]:
    (workdir / "test_input.json").write_text(json.dumps({"input": job_input}))
    tmpdir = workdir / "tmp"
    tmpdir.mkdir()
    log_path = workdir / "worker.log"
    full_env = {key: value for key, value in os.environ.items() if not key.startswith(("BUCKET_", "RUNPOD_", "HF_"))}
    full_env.update(env, TMPDIR=str(tmpdir), HOME=str(workdir), PYTHONPATH=str(ROOT))
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "handler"], cwd=workdir, env=full_env,
                                   stdout=log, stderr=subprocess.STDOUT)
    return process, log_path, tmpdir


def _bucket_objects(endpoint: str) -> set[str]:
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                          aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")
    return {item["Key"] for item in client.list_objects_v2(Bucket=TEST_BUCKET).get("Contents", [])}


@pytest.mark.parametrize("output_type, log_level", [("s3", "DEBUG"), ("base64", None)])
def test_the_local_run_logs_no_media_and_no_presigned_url(s3_server, tmp_path, output_type, log_level):
    env = {"MODEL_BACKEND": "lite", "BUCKET_ENDPOINT_URL": f"{s3_server}/{TEST_BUCKET}",
           "BUCKET_ACCESS_KEY_ID": S3_ACCESS_KEY, "BUCKET_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    if log_level:
        env["RUNPOD_LOG_LEVEL"] = log_level  # asks the SDK to log every input and output
    before = _bucket_objects(s3_server)
    process, log_path, tmpdir = _start(tmp_path, sample_job_input(output_type=output_type, resolution="128*128"), env)
    assert process.wait(timeout=120) == 0, log_path.read_text()
    log = log_path.read_text()

    uploaded = _bucket_objects(s3_server) - before
    assert len(uploaded) == (1 if output_type == "s3" else 0), "the job ran and delivered as asked"
    assert "job local_test done" in log, log
    assert "X-Amz-Signature" not in log and "X-Amz-Credential" not in log
    assert S3_SECRET_KEY not in log
    assert not LONG_BASE64_RUN.search(log), LONG_BASE64_RUN.search(log).group(0)[:80]
    if log_level:
        assert "RUNPOD_LOG_LEVEL=DEBUG: the RunPod SDK logs at WARN instead" in log
    assert list(tmpdir.rglob("*")) == []


def test_sigterm_during_the_local_run_removes_the_jobs_files(media_server, tmp_path):
    base, folder = media_server
    speech, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    seconds = 240
    repeats = math.ceil(seconds * rate / len(speech))
    soundfile.write(folder / "local_long_speech.wav", np.tile(speech, repeats)[: seconds * rate], rate)
    job_input = sample_job_input(resolution="832*480")
    del job_input["audio_file"]
    job_input["audio_url"] = f"{base}/local_long_speech.wav"
    process, log_path, tmpdir = _start(tmp_path, job_input, {"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1"})
    try:
        deadline = time.monotonic() + 60
        while "'stage': 'generate'" not in log_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.02)
        assert list(tmpdir.glob("talking-head-job-*")), "the job's folder exists while it renders"
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=20)
        print(f"local run: SIGTERM -> process ended {time.monotonic() - signalled:.2f} s later")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text()
    assert returncode == 1, log  # the SDK's test mode: the job failed
    assert "job local_test stopped" in log and "the worker received SIGTERM" in log, log
    assert re.search(r"generation stops at frame (\d+)/6000", log), log
    assert list(tmpdir.rglob("*")) == [], "the job's temporary files are gone"
