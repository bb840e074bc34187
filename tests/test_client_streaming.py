"""The client's --stream mode against a scripted RunPod endpoint API on 127.0.0.1.

The segments are real MPEG-TS (H.264 + AAC) cut by ffmpeg's HLS muxer, so the tests can check what
a viewer gets: the file the client writes plays while it grows, and in the end it is the whole
video.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from runpod_client_examples import StreamError, StreamSegment, TalkingHeadClient, main
from tests.conftest import ASSETS, ROOT, free_port
from tests.mp4_facts import FFMPEG, mp4_facts, read_audio, read_frames

JOB_ID = "job-stream-1"
WIDTH, HEIGHT, FPS, SECONDS = 160, 120, 25, 3
PLAYLIST_URL = "https://bucket.example/job-stream-1/index.m3u8?X-Amz-Signature=abc"
POLL = 0.05


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> list[tuple[bytes, float, float]]:
    """Three 1 s MPEG-TS segments of a 3 s test video with a tone: (bytes, start, end)."""
    folder = tmp_path_factory.mktemp("hls")
    subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(SECONDS),
         "-c:v", "libx264", "-g", str(FPS), "-pix_fmt", "yuv420p", "-c:a", "aac",
         "-f", "hls", "-hls_time", "1", "-hls_list_size", "0", "-hls_segment_filename", str(folder / "seg%d.ts"),
         str(folder / "index.m3u8")],
        check=True, timeout=60,
    )
    durations = [float(value) for value in re.findall(r"#EXTINF:([\d.]+)", (folder / "index.m3u8").read_text())]
    assert len(durations) == 3, durations
    starts = [sum(durations[:index]) for index in range(len(durations))]
    return [((folder / f"seg{index}.ts").read_bytes(), start, start + duration)
            for index, (start, duration) in enumerate(zip(starts, durations, strict=True))]


def segment_item(segment: tuple[bytes, float, float], index: int, part: int = 0, parts: int = 1,
                 data: bytes | None = None, **extra: Any) -> dict[str, Any]:
    whole, start, end = segment
    return {"output": {"segment": {
        "index": index, "part": part, "parts": parts, "start_seconds": start, "end_seconds": end,
        "content_type": "video/mp2t", "data_base64": base64.b64encode(whole if data is None else data).decode(),
    }, **extra}}


def split_items(segment: tuple[bytes, float, float], index: int) -> list[dict[str, Any]]:
    """One segment sent as two parts, as the worker does past RunPod's 1 MB per item."""
    half = len(segment[0]) // 2
    return [segment_item(segment, index, 0, 2, segment[0][:half]),
            segment_item(segment, index, 1, 2, segment[0][half:])]


def result_item(segments: int) -> dict[str, Any]:
    return {"output": {
        "success": True, "request_id": JOB_ID, "duration_seconds": float(SECONDS), "num_frames": SECONDS * FPS,
        "fps": FPS, "width": WIDTH, "height": HEIGHT, "seed": 1, "generation_time_seconds": 2.5,
        "timings": {"generate": 2.0}, "segments": segments,
    }}


def poll(status: str, *items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": JOB_ID, "status": status, "stream": list(items), **extra}


class FakeEndpoint:
    """/run, /stream/<id>, /cancel/<id> of one endpoint; each /stream call answers the next scripted
    reply (the last one again once the script is used up). `local` answers /stream as the SDK's
    local test API does: GET is 405, POST runs the job and answers once."""

    def __init__(self, replies: list[dict[str, Any]], local: bool = False) -> None:
        self.replies = replies
        self.local = local
        self.calls: list[str] = []
        self.run_bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v2/endpoint"
        # a short poll interval: shutdown() waits for it, once per test
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    @property
    def cancels(self) -> list[str]:
        return [call for call in self.calls if "/cancel/" in call]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.calls.append(f"{method} {path}")
            route = path.removeprefix("/v2/endpoint")
            if method == "POST" and route == "/run":
                self.run_bodies.append(json.loads(body))
                return 200, {"id": JOB_ID, "status": "IN_QUEUE"}
            if method == "POST" and route == f"/cancel/{JOB_ID}":
                return 200, {"id": JOB_ID, "status": "CANCELLED"}
            if route == f"/stream/{JOB_ID}":
                if self.local and method == "GET":
                    return 405, {"detail": "Method Not Allowed"}
                return 200, self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            return 404, {"detail": f"no route {method} {path}"}

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._reply(*endpoint._answer("GET", self.path, b""))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._reply(*endpoint._answer("POST", self.path, self.rfile.read(length)))

            def _reply(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def endpoint_factory() -> Iterator[Any]:
    started: list[FakeEndpoint] = []

    def start(replies: list[dict[str, Any]], local: bool = False) -> FakeEndpoint:
        started.append(FakeEndpoint(replies, local))
        return started[-1]

    yield start
    for endpoint in started:
        endpoint.close()


def job_input() -> dict[str, Any]:
    return TalkingHeadClient.job_input(str(ASSETS / "portrait.jpg"), str(ASSETS / "speech.wav"), seed=1)


def decoded_frames(path: Path) -> int:
    return len(read_frames(path, WIDTH, HEIGHT, gray=True))


def test_segments_are_appended_as_they_arrive_and_play_while_the_file_grows(endpoint_factory, segments, tmp_path):
    endpoint = endpoint_factory([
        poll("IN_PROGRESS", segment_item(segments[0], 0, playlist_url=PLAYLIST_URL), segment_item(segments[1], 1)),
        poll("IN_PROGRESS"),
        poll("IN_PROGRESS", *split_items(segments[2], 2)),
        poll("COMPLETED", result_item(3)),
    ])
    seen: list[tuple[StreamSegment, int, int]] = []
    out = tmp_path / "video.ts"

    def on_segment(segment: StreamSegment) -> None:
        frames = decoded_frames(out) if segment.index == 0 else -1
        seen.append((segment, out.stat().st_size, frames))

    result = TalkingHeadClient(endpoint.url, "key").stream(job_input(), out, timeout_seconds=30,
                                                          on_segment=on_segment, poll_seconds=POLL)

    assert endpoint.run_bodies[0]["input"]["stream"] is True
    assert endpoint.calls == ["POST /v2/endpoint/run"] + [f"GET /v2/endpoint/stream/{JOB_ID}"] * 4
    assert result.job_id == JOB_ID and result.path == out
    assert result.output == result_item(3)["output"]
    # the file as a player sees it after the first segment: that segment, already decodable
    first, size_after_first, frames_after_first = seen[0]
    assert size_after_first == len(segments[0][0])
    assert abs(frames_after_first - FPS * (first.end_seconds - first.start_seconds)) <= 1
    assert first.playlist_url == PLAYLIST_URL
    assert [(s.index, s.parts, s.size_bytes) for s, _, _ in seen] == [
        (index, 2 if index == 2 else 1, len(data)) for index, (data, _, _) in enumerate(segments)
    ]
    assert [s.start_seconds for s, _, _ in seen] == [start for _, start, _ in segments]
    # segment 2 came two polls after segment 1, and the result says when the first one came
    assert seen[2][0].arrived_seconds >= seen[1][0].arrived_seconds + POLL
    assert result.first_segment_seconds == first.arrived_seconds <= result.total_seconds
    # the whole file: the segments byte for byte, the full video with its sound
    assert out.read_bytes() == b"".join(data for data, _, _ in segments)
    assert abs(decoded_frames(out) - SECONDS * FPS) <= 1
    assert abs(len(read_audio(out)) / 16000 - SECONDS) <= 0.1
    assert endpoint.cancels == []


def test_the_local_test_api_is_asked_once_by_post(endpoint_factory, segments, tmp_path):
    """The SDK's local API runs the job inside its one POST /stream and answers every item at once."""
    endpoint = endpoint_factory([poll("COMPLETED", *(segment_item(s, i) for i, s in enumerate(segments)),
                                      result_item(3))], local=True)

    result = TalkingHeadClient(endpoint.url, None).stream(job_input(), tmp_path, timeout_seconds=30, poll_seconds=POLL)

    assert endpoint.calls == ["POST /v2/endpoint/run", f"GET /v2/endpoint/stream/{JOB_ID}",
                              f"POST /v2/endpoint/stream/{JOB_ID}"]
    assert result.path == tmp_path / f"{JOB_ID}.ts"
    assert result.path.read_bytes() == b"".join(data for data, _, _ in segments)


def test_the_sdks_own_local_api(segments, tmp_path):
    """The SDK's local test API (`--rp_serve_api`) with a generator handler, as the worker's will be:
    the client must find its POST-only /stream and read the items it answers."""
    for index, (data, _, _) in enumerate(segments):
        (tmp_path / f"seg{index}.ts").write_bytes(data)
    (tmp_path / "stream_handler.py").write_text(
        "import base64, pathlib, runpod\n"
        f"SEGMENTS = {[(str(tmp_path / f'seg{i}.ts'), start, end) for i, (_, start, end) in enumerate(segments)]!r}\n"
        "def handler(job):\n"
        "    assert job['input']['stream'] is True\n"
        "    for index, (path, start, end) in enumerate(SEGMENTS):\n"
        "        data = base64.b64encode(pathlib.Path(path).read_bytes()).decode()\n"
        "        yield {'segment': {'index': index, 'part': 0, 'parts': 1, 'start_seconds': start,\n"
        "               'end_seconds': end, 'content_type': 'video/mp2t', 'data_base64': data}}\n"
        "    yield {'success': True, 'segments': len(SEGMENTS)}\n"
        "runpod.serverless.start({'handler': handler})\n"
    )
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNPOD_")}
    server = subprocess.Popen(
        [sys.executable, str(tmp_path / "stream_handler.py"), "--rp_serve_api", "--rp_api_host", "127.0.0.1",
         "--rp_api_port", str(port)],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the SDK's local API did not start"
            try:
                if requests.get(f"{url}/docs", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)

        result = TalkingHeadClient(url, None).stream(job_input(), tmp_path, timeout_seconds=60)
    finally:
        server.terminate()
        server.wait(timeout=20)

    assert result.output == {"success": True, "segments": 3}
    assert result.path.read_bytes() == b"".join(data for data, _, _ in segments)


@pytest.mark.parametrize("items, message, job_running", [
    (lambda s: [segment_item(s[1], 1)], "got segment 1 part 0 where segment 0 part 0 was due", True),
    (lambda s: [segment_item(s[0], 0), split_items(s[1], 1)[0], segment_item(s[2], 2)],
     "got segment 2 part 0 where segment 1 part 1 of 2 was due", True),
    (lambda s: [segment_item(s[0], 0), split_items(s[1], 1)[1]],
     "got segment 1 part 1 where segment 1 part 0 was due", True),
    (lambda s: [segment_item(s[0], 0), split_items(s[1], 1)[0], result_item(2)],
     "the result arrived with segment 1 incomplete", False),
    (lambda s: [segment_item(s[0], 0), result_item(3)], "the result counts 3 segments, 1 arrived", False),
], ids=["first-missing", "part-missing", "part-first", "result-mid-segment", "segments-missing"])
def test_a_lost_or_reordered_item_is_an_error(endpoint_factory, segments, tmp_path, items, message, job_running):
    endpoint = endpoint_factory([poll("IN_PROGRESS", *items(segments))])

    with pytest.raises(StreamError, match=re.escape(message)) as raised:
        TalkingHeadClient(endpoint.url, None).stream(job_input(), tmp_path / "out.ts", 30, poll_seconds=POLL)

    assert "the stream is broken" in str(raised.value) and str(tmp_path / "out.ts") in str(raised.value)
    # a job still running when its stream breaks is stopped; one that already sent its result is over
    assert endpoint.cancels == ([f"POST /v2/endpoint/cancel/{JOB_ID}"] if job_running else [])


@pytest.mark.parametrize("reply, message", [
    (poll("IN_PROGRESS", {"output": {"error": "NO_FACE: no face in the portrait; send a photo with a face."}}),
     f"job {JOB_ID} failed: NO_FACE: no face in the portrait"),
    (poll("FAILED", error="INTERNAL: the worker ran out of patience."), f"job {JOB_ID} FAILED: INTERNAL: the worker"),
    (poll("CANCELLED"), f"job {JOB_ID} CANCELLED before it finished"),
    (poll("COMPLETED"), f"job {JOB_ID} COMPLETED without a result item after 1 segments: does the endpoint's"),
], ids=["error-item", "failed-status", "cancelled", "no-result"])
def test_a_failed_job_is_reported(endpoint_factory, segments, tmp_path, reply, message):
    endpoint = endpoint_factory([poll("IN_PROGRESS", segment_item(segments[0], 0)), reply])

    with pytest.raises(StreamError, match=re.escape(message)):
        TalkingHeadClient(endpoint.url, None).stream(job_input(), tmp_path / "out.ts", 30, poll_seconds=POLL)

    assert (tmp_path / "out.ts").read_bytes() == segments[0][0]
    assert endpoint.cancels == []


def test_giving_up_at_the_deadline_cancels_the_job(endpoint_factory, segments, tmp_path):
    endpoint = endpoint_factory([poll("IN_PROGRESS", segment_item(segments[0], 0)), poll("IN_PROGRESS")])

    with pytest.raises(TimeoutError, match=f"job {JOB_ID} still IN_PROGRESS after 0.4 s .*1 segments.*; cancelled it"):
        TalkingHeadClient(endpoint.url, None).stream(job_input(), tmp_path / "out.ts", 0.4, poll_seconds=POLL)

    assert endpoint.cancels == [f"POST /v2/endpoint/cancel/{JOB_ID}"]


def test_ctrl_c_cancels_the_job(endpoint_factory, segments, tmp_path):
    endpoint = endpoint_factory([poll("IN_PROGRESS", segment_item(segments[0], 0)), poll("IN_PROGRESS")])

    def interrupt(segment: StreamSegment) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TalkingHeadClient(endpoint.url, None).stream(job_input(), tmp_path / "out.ts", 30, interrupt, POLL)

    assert endpoint.cancels == [f"POST /v2/endpoint/cancel/{JOB_ID}"]


def test_command_line_prints_each_arrival_and_remuxes_to_mp4(endpoint_factory, segments, tmp_path, capsys):
    endpoint = endpoint_factory([
        poll("IN_PROGRESS", segment_item(segments[0], 0, playlist_url=PLAYLIST_URL), *split_items(segments[1], 1)),
        poll("COMPLETED", segment_item(segments[2], 2), result_item(3)),
    ])

    code = main(["--base-url", endpoint.url, "--image", str(ASSETS / "portrait.jpg"),
                 "--audio", str(ASSETS / "speech.wav"), "--stream", "--mp4", "--out", str(tmp_path)])

    printed = capsys.readouterr()
    assert code == 0, printed.err
    lines = printed.out.splitlines()
    assert re.fullmatch(r"segment 0  0\.00–1\.00 s  \d+ kB  arrived at \d+\.\d\d s", lines[0])
    assert lines[1] == f"HLS playlist: {PLAYLIST_URL}"
    assert re.fullmatch(r"segment 1  1\.00–2\.00 s  \d+ kB  arrived at \d+\.\d\d s  \(2 parts\)", lines[2])
    assert lines[3].startswith("segment 2  2.00–3.00 s")
    assert re.fullmatch(rf"{JOB_ID}: 3 segments, 3\.00 s of video, 0\.\d MB in .*{JOB_ID}\.ts; "
                        r"first segment after \d+\.\d\d s, all after \d+\.\d\d s", lines[4])
    assert lines[5] == f"remuxed to {tmp_path / f'{JOB_ID}.mp4'}"
    facts = mp4_facts(tmp_path / f"{JOB_ID}.mp4")
    assert abs(facts.num_frames - SECONDS * FPS) <= 1
    assert (facts.video_codec, facts.audio_codec, facts.moov_before_mdat) == ("h264", "aac", True)


def test_command_line_keeps_streaming_apart_from_the_other_modes(capsys):
    common = ["--base-url", "http://127.0.0.1:9", "--image", "x.jpg", "--audio", "a.wav"]
    for extra, message in ((["--stream", "--mode", "batch"], "not allowed with argument"),
                           (["--stream", "--audio", "b.wav"], "--stream runs one job"),
                           (["--mp4"], "--mp4 goes with --stream")):
        with pytest.raises(SystemExit):
            main(common + extra)
        assert message in capsys.readouterr().err

