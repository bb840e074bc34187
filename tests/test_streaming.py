"""Streaming (docs/CONTRACT.md, "Streaming"): segments that leave while the video renders.

Measured on the real thing: segments decoded by the ffmpeg the worker ships, the handler's own
generator, RunPod's job loop posting to a platform on 127.0.0.1 that a client polls, the SDK's
local API, and a bucket on a local S3 server (moto).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import requests

from handler.progress import ProgressReporter
from handler.runpod_handler import RunPodHandler
from handler.sample import SAMPLE_SPEECH, sample_job_input
from handler.segments import Segment, SegmentPlan, SegmentWriter
from handler.startup import start_worker
from handler.streaming import segment_items
from runpod_client_examples import StreamSegment, TalkingHeadClient
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, TEST_BUCKET, WorkerProcess
from tests.mp4_facts import FFMPEG, mp4_facts
from tests.runpod_platform import QueueWorker, RunPodPlatform

RUNPOD_STREAM_ITEM_LIMIT = 1_000_000
RESULT_FIELDS = {"success", "request_id", "duration_seconds", "fps", "width", "height", "num_frames", "model",
                 "seed", "mode", "generation_time_seconds", "file_size_bytes", "timings", "segments"}


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> Path:
    """20 s of speech: the sample, looped."""
    path = tmp_path_factory.mktemp("speech") / "long.wav"
    subprocess.run([FFMPEG, "-v", "error", "-stream_loop", "3", "-i", str(SAMPLE_SPEECH), "-t", "20", str(path)],
                   check=True)
    return path


def _long_job(speech: Path, resolution: str = "128*128", **fields: Any) -> dict[str, Any]:
    # the smallest size by default: what streaming proves does not depend on it, and encoding is the jobs' time
    return sample_job_input(audio_file=base64.b64encode(speech.read_bytes()).decode(), resolution=resolution,
                            output_type="auto", stream=True, **fields)


def _segments(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item["segment"] for item in items if "segment" in item]


def _joined(items: list[dict[str, Any]], path: Path) -> Path:
    path.write_bytes(b"".join(base64.b64decode(segment["data_base64"]) for segment in _segments(items)))
    return path


def _keyframes(path: Path) -> int:
    decoded = subprocess.run([FFMPEG, "-v", "error", "-skip_frame", "nokey", "-i", str(path), "-map", "0:v:0",
                              "-f", "rawvideo", "-pix_fmt", "gray", "pipe:1"], capture_output=True, check=True)
    return len(decoded.stdout) // (64 * 48)


def _check_video(path: Path, num_frames: int, speech_seconds: float) -> None:
    facts = mp4_facts(path)
    assert (facts.video_codec, facts.audio_codec, facts.fps) == ("h264", "aac", 25.0)
    assert facts.num_frames == num_frames
    assert abs(facts.video_seconds - speech_seconds) <= 1 / 25
    # TS keeps the AAC encoder's priming and padding (an MP4 trims them): a few hundredths longer
    assert abs(facts.audio_seconds - speech_seconds) < 0.15


def test_segment_plan_cuts_on_the_last_frame_of_batches():
    fast = SegmentPlan.for_batches((9, 12), 25.0)
    # the first segment is the first batch less its last frame; later ones 5 blocks (2.4 s)
    assert fast.starts(150) == [0, 8, 68, 128]
    assert SegmentPlan.for_batches((25, 25), 25.0).starts(75) == [0, 24, 74]
    assert SegmentPlan.for_batches((77, 80), 16.0).starts(300) == [0, 76, 156, 236]
    assert SegmentPlan.for_batches((1, 25), 25.0).starts(60) == [0, 50]


def test_each_segment_leaves_with_its_batch_and_plays_alone(tmp_path):
    """Frames in 9- then 12-frame batches (Wan's fast mode): a segment is handed over right
    after the batch that completes it, starts on its own keyframe, and carries its audio."""
    speech = tmp_path / "tone.wav"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "sine=f=220:d=4.3", "-ar", "44100", str(speech)],
                   check=True)
    num_frames = round(4.3 * 25)
    handed: list[tuple[Segment, int]] = []
    rng = np.random.default_rng(0)
    with SegmentWriter(tmp_path / "hls", 64, 48, 25.0, speech, num_frames, SegmentPlan.for_batches((9, 12), 25.0),
                       lambda segment: handed.append((segment, writer.frames_written))) as writer:
        batch_ends = [9, *range(21, num_frames, 12), num_frames]
        for start, end in zip([0, *batch_ends], batch_ends, strict=False):
            writer.write(rng.integers(0, 255, (end - start, 48, 64, 3), dtype=np.uint8))
    # batches end at 9, 21, 33, 45, 57, 69, ..., 105, 108; the last segment leaves at close()
    assert [(s.start_frame, s.end_frame) for s, _ in handed] == [(0, 8), (8, 68), (68, 108)]
    assert [at for _, at in handed] == [9, 69, 108], "each segment left with the batch that completed it"
    for segment, _ in handed:
        assert mp4_facts(segment.path).num_frames == segment.end_frame - segment.start_frame
        assert mp4_facts(segment.path).audio_codec == "aac"
        assert _keyframes(segment.path) == 1, "one keyframe, the first frame: a segment plays on its own"
    joined = tmp_path / "all.ts"
    joined.write_bytes(b"".join(segment.path.read_bytes() for segment, _ in handed))
    _check_video(joined, num_frames, 4.3)
    assert mp4_facts(writer.playlist).num_frames == num_frames, "ffmpeg's own playlist plays the whole video"


def test_a_large_segment_is_split_into_items_under_runpod_limit(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 2_500_000, dtype=np.uint8).tobytes()
    segment = Segment(index=3, start_frame=75, end_frame=100, fps=25.0, path=tmp_path / "unused.ts")
    items = segment_items(segment, data)
    assert [item["segment"]["part"] for item in items] == [0, 1, 2, 3]
    assert {item["segment"]["parts"] for item in items} == {4}
    assert all(len(json.dumps({"output": item})) < RUNPOD_STREAM_ITEM_LIMIT for item in items)
    assert b"".join(base64.b64decode(item["segment"]["data_base64"]) for item in items) == data
    assert items[0]["segment"]["start_seconds"] == 3.0 and items[0]["segment"]["end_seconds"] == 4.0


@pytest.fixture(scope="module")
def streaming_worker():
    return start_worker({"MODEL_BACKEND": "lite", "STREAM_RESULTS": "1"})


def _slow_batches(worker, monkeypatch) -> None:
    """Each batch takes at least 0.1 s, as a GPU's takes seconds: the machine's load then cannot
    make a whole job as quick as its start."""
    generate = worker.loaded_backend.generate

    def slow_generate(*args, **kwargs):
        for batch in generate(*args, **kwargs):
            time.sleep(0.1)
            yield batch

    monkeypatch.setattr(worker.loaded_backend, "generate", slow_generate)


def _run_generator(worker, job: dict[str, Any]) -> tuple[list[tuple[float, dict[str, Any]]], float]:
    """The handler's generator, as RunPod's SDK drives it; items with their arrival times."""
    async def consume() -> list[tuple[float, dict[str, Any]]]:
        started = time.monotonic()
        return [(time.monotonic() - started, item) async for item in RunPodHandler(worker).stream(job, {})]

    started = time.monotonic()
    items = asyncio.run(consume())
    return items, time.monotonic() - started


def test_a_long_job_streams_its_first_segment_long_before_it_ends(streaming_worker, long_speech, tmp_path,
                                                                 monkeypatch):
    _slow_batches(streaming_worker, monkeypatch)
    # 256x256: a job whose frames take a while, as on a GPU, so that its start is a small part of it
    timed, total = _run_generator(streaming_worker, {"id": "stream-1", "input": _long_job(long_speech, "256*256")})
    items = [item for _, item in timed]
    first_at = timed[0][0]
    assert "segment" in items[0]
    assert first_at < total / 3, f"first segment after {first_at:.2f} s of a {total:.2f} s job"
    assert all(len(json.dumps({"output": item})) < RUNPOD_STREAM_ITEM_LIMIT for item in items)
    segments = _segments(items)
    assert [s["index"] for s in segments] == list(range(len(segments)))
    assert all(a["end_seconds"] == b["start_seconds"] for a, b in zip(segments, segments[1:], strict=False))
    result = items[-1]
    assert RESULT_FIELDS <= result.keys() and result["success"] is True
    assert "video_base64" not in result, "the segments are the video; the last item stays under 1 MB"
    assert result["segments"] == len(segments) and result["num_frames"] == 500
    assert segments[-1]["end_seconds"] == result["duration_seconds"] == 20.0
    _check_video(_joined(items, tmp_path / "joined.ts"), 500, 20.0)


def test_a_job_without_stream_on_a_streaming_endpoint_yields_its_result_once(streaming_worker):
    timed, _ = _run_generator(streaming_worker, {"id": "plain", "input": sample_job_input(resolution="128*128")})
    [(_, result)] = timed
    assert result["success"] is True and result["video_base64"]


def test_stream_needs_a_way_out_and_says_so_before_any_media_work():
    worker = start_worker({"MODEL_BACKEND": "lite"})
    # the audio is not even base64: the stream's problem is found first
    result = worker.handle({"id": "s", "input": sample_job_input(audio_file="%%%", stream=True)})
    assert result["error"].startswith("INVALID_INPUT: stream is true") and "STREAM_RESULTS=1" in result["error"]
    assert "BUCKET_" in result["error"]
    result = worker.handle({"id": "s", "input": sample_job_input(stream="yes")})
    assert result["error"] == "INVALID_INPUT: stream must be true or false, not 'yes'."


def test_base64_output_with_stream_items_is_refused(streaming_worker):
    timed, _ = _run_generator(streaming_worker, {"id": "b", "input": sample_job_input(stream=True)})
    [(_, result)] = timed
    assert result["error"].startswith("INVALID_INPUT: output_type 'base64' with stream true")


def test_segments_reach_a_client_polling_runpod_while_the_job_runs(tmp_path, long_speech, s3_server):
    """RunPod's own job loop (the SDK) with STREAM_RESULTS=1 posts each item to the platform as
    it is made; the example client polling /stream/<id> gets segments while the job runs, in a
    file that grows; the bucket's playlist URL comes first, in a progress update and the first item."""
    platform = RunPodPlatform()
    worker = QueueWorker(platform, {"MODEL_BACKEND": "lite", "STREAM_RESULTS": "1", **_bucket_env(s3_server)},
                         tmp_path)
    try:
        worker.wait_for_log("worker ready", 60)
        status_at_segment: list[str] = []

        def on_segment(segment: StreamSegment) -> None:
            [status] = platform.status.values()  # the one job so far
            status_at_segment.append(status)

        client = TalkingHeadClient(platform.api_url, api_key=None)
        streamed = client.stream(_long_job(long_speech), tmp_path / "client.ts", timeout_seconds=120,
                                 on_segment=on_segment)
        job_id = streamed.job_id
        assert status_at_segment[0] == "IN_PROGRESS", "the first segment came only after the job ended"
        assert streamed.first_segment_seconds is not None
        assert streamed.output["success"] is True and streamed.output["segments"] == len(streamed.segments)
        _check_video(streamed.path, 500, 20.0)
        # the same playlist: the result's link is signed again at the job's end (its key, not its signature)
        playlist_url = streamed.segments[0].playlist_url
        assert playlist_url.split("?")[0] == streamed.output["playlist_url"].split("?")[0]
        assert {"stage": "stream", "percent": 10.0, "playlist_url": playlist_url} in platform.progress[job_id]
        received = [output for _, output in platform.streamed[job_id]]
        assert all(len(json.dumps({"output": item})) < RUNPOD_STREAM_ITEM_LIMIT for item in received)
        # the segments went out through /stream only: the job's final output (what /status and /runsync
        # give) is the result alone, however many segments went before it, far under RunPod's cap
        assert received[-1] == streamed.output and "segment" not in received[-1]
        final = platform.results[job_id]["output"]
        assert final == [streamed.output] and "video_base64" not in final[0]
        assert final[0]["duration_seconds"] == pytest.approx(20, abs=0.1)
        assert len(_segments(received)) == streamed.output["segments"] > 5
        assert len(json.dumps({"output": final})) < 100_000 < len(json.dumps(received))

        plain = platform.submit(sample_job_input(resolution="128*128"))
        platform.wait_for(lambda: plain in platform.results, 60, "the job without stream")
        [result] = platform.results[plain]["output"]
        assert result["success"] is True and result["video_base64"] and "segments" not in result
    finally:
        worker.stop()
        platform.close()
    assert not worker.leftovers(), "a streamed job leaves nothing on disk"
    assert "X-Amz-Signature" not in worker.log_path.read_text(), "a presigned URL reached the log"


def test_local_api_streams_every_segment_and_runsync_stays_a_dict(tmp_path, plain_worker):
    streaming = WorkerProcess({"MODEL_BACKEND": "lite", "STREAM_RESULTS": "1"}, tmp_path)
    try:
        job = sample_job_input(resolution="128*128", output_type="auto", stream=True)
        job_id = requests.post(f"{streaming.url}/run", json={"input": job}, timeout=30).json()["id"]
        # the local API (POST only) runs the job on this call and answers once it ends, every item at once
        reply = requests.post(f"{streaming.url}/stream/{job_id}", timeout=300).json()
    finally:
        streaming.stop()
    items = [entry["output"] for entry in reply["stream"]]
    assert reply["status"] == "COMPLETED" and items[-1]["success"] is True
    assert items[-1]["segments"] == len(_segments(items)) > 1
    _check_video(_joined(items, tmp_path / "local.ts"), items[-1]["num_frames"], 7.7)

    # an endpoint without STREAM_RESULTS: the contract's result, unchanged
    output = plain_worker.runsync(sample_job_input(resolution="128*128"))["output"]
    assert isinstance(output, dict) and output["success"] is True and "segments" not in output


def _s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                        aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")


def _bucket_env(s3_server: str) -> dict[str, str]:
    return {"BUCKET_ENDPOINT_URL": s3_server, "BUCKET_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "BUCKET_SECRET_ACCESS_KEY": S3_SECRET_KEY, "BUCKET_NAME": TEST_BUCKET}


def test_bucket_gets_segments_while_the_job_runs_and_its_playlist_plays(s3_server, long_speech, tmp_path,
                                                                        monkeypatch):
    worker = start_worker({"MODEL_BACKEND": "lite", **_bucket_env(s3_server)})
    _slow_batches(worker, monkeypatch)
    s3 = _s3(s3_server)
    outcome: dict[str, Any] = {}
    job = threading.Thread(target=lambda: outcome.update(worker.handle({"id": "bucket-stream",
                                                                        "input": _long_job(long_speech)})))
    job.start()
    segments_seen: list[int] = []
    while job.is_alive():
        keys = [entry["Key"] for entry in s3.list_objects_v2(Bucket=TEST_BUCKET).get("Contents", [])]
        segments_seen.append(sum(1 for key in keys if "/bucket-stream-" in key and key.endswith(".ts")))
        time.sleep(0.1)
    job.join()
    assert outcome["success"] is True, outcome
    assert any(0 < seen < outcome["segments"] for seen in segments_seen), (
        f"segments in the bucket while the job ran: {segments_seen}; the first ones should be there before the last"
    )
    playlist = requests.get(outcome["playlist_url"], timeout=30)
    assert playlist.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert playlist.text.rstrip().endswith("#EXT-X-ENDLIST")
    # any HLS player: the ffmpeg the worker ships reads the presigned playlist and its segments
    played = tmp_path / "played.ts"
    subprocess.run([FFMPEG, "-v", "error", "-i", outcome["playlist_url"], "-c", "copy", str(played)], check=True)
    _check_video(played, 500, 20.0)
    # and the whole video as one MP4, as without stream
    video = tmp_path / "video.mp4"
    video.write_bytes(requests.get(outcome["video_url"], timeout=30).content)
    assert mp4_facts(video).num_frames == 500 and mp4_facts(video).moov_before_mdat


def test_a_stream_stopped_by_its_consumer_stops_the_job_and_leaves_nothing(streaming_worker, long_speech,
                                                                           tmp_path, monkeypatch, caplog):
    """RunPod cancelling a generator job closes the generator: the job stops at its next batch."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    caplog.set_level(logging.INFO, logger="handler.job")
    handler = RunPodHandler(streaming_worker)

    async def first_item_then_close() -> tuple[dict[str, Any], float]:
        items = handler.stream({"id": "closed", "input": _long_job(long_speech)}, {})
        first = await anext(items)
        started = time.monotonic()
        await items.aclose()
        return first, time.monotonic() - started

    first, _ = asyncio.run(first_item_then_close())
    assert "segment" in first
    assert "job closed stopped" in caplog.text and "job closed done" not in caplog.text
    assert not list(tmp_path.iterdir()), "the stopped job's segments were left on disk"
    # the worker goes on with the next job
    timed, _ = _run_generator(streaming_worker, {"id": "after", "input": sample_job_input(resolution="128*128")})
    assert timed[-1][1]["success"] is True


def test_a_stream_to_a_jobs_own_private_bucket_is_refused_before_any_media_work():
    worker = start_worker({"MODEL_BACKEND": "lite"})
    s3_config = {"accessId": S3_ACCESS_KEY, "accessSecret": S3_SECRET_KEY, "bucketName": "b",
                 "endpointUrl": "http://127.0.0.1:9"}
    result = worker.handle({"id": "p", "s3Config": s3_config,
                            "input": sample_job_input(audio_file="%%%", stream=True, output_type="base64")})
    assert result["error"].startswith("INVALID_INPUT: ") and "s3Config.endpointUrl" in result["error"]


def _signed_at(url: str) -> tuple[datetime.datetime, int]:
    """When a presigned URL was signed (to the second) and for how long."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    signed = datetime.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    return signed, int(query["X-Amz-Expires"][0])


def test_a_stream_job_longer_than_url_expiry_gets_its_playlist_signed_at_its_end(s3_server, long_speech,
                                                                                 monkeypatch):
    expiry = 1
    worker = start_worker({"MODEL_BACKEND": "lite", "URL_EXPIRY_SECONDS": str(expiry), **_bucket_env(s3_server)})
    _slow_batches(worker, monkeypatch)
    reported: list[str] = []
    monkeypatch.setattr(ProgressReporter, "report_playlist", lambda self, url: reported.append(url))
    outcome = worker.handle({"id": "outlives-expiry", "input": _long_job(long_speech)})
    assert outcome["success"] is True, outcome
    assert outcome["generation_time_seconds"] > 2 * expiry, "the job must outlive a link signed at its start"

    s3 = _s3(s3_server)
    objects = [entry for entry in s3.list_objects_v2(Bucket=TEST_BUCKET)["Contents"]
               if "/outlives-expiry-" in entry["Key"]]
    last_segment = max(entry["LastModified"] for entry in objects if entry["Key"].endswith(".ts"))
    signed, lifetime = _signed_at(outcome["playlist_url"])
    start_signed, _ = _signed_at(reported[0])
    print(f"playlist link signed at the start {start_signed:%H:%M:%S}, in the result {signed:%H:%M:%S}; "
          f"last segment up at {last_segment:%H:%M:%S}; the job took {outcome['generation_time_seconds']:.1f} s")
    assert lifetime == expiry
    assert signed >= last_segment > start_signed, "signed again once the last segment was up, after the start's"
    expires_at = datetime.datetime.fromisoformat(outcome["playlist_expires_at"])
    # one clock reading for the text, botocore's own for the URL: the same second, or the next
    assert abs(expires_at - (signed + datetime.timedelta(seconds=expiry))) <= datetime.timedelta(seconds=1), outcome
    # the closed playlist a player reads after the job lists links signed then too
    playlist_key = next(entry["Key"] for entry in objects if entry["Key"].endswith("index.m3u8"))
    text = s3.get_object(Bucket=TEST_BUCKET, Key=playlist_key)["Body"].read().decode()
    links = [line for line in text.splitlines() if line.startswith("http")]
    assert text.rstrip().endswith("#EXT-X-ENDLIST") and len(links) == outcome["segments"]
    assert all(_signed_at(link)[0] >= last_segment for link in links), text
