"""How clients call the talking-head endpoint on RunPod: /runsync, /run + /status, batches, streaming.

    export RUNPOD_API_KEY=...            # RunPod console → Settings → API Keys
    python runpod_client_examples.py --endpoint-id abc123 --image me.jpg --audio hello.mp3
    python runpod_client_examples.py --endpoint-id abc123 --image me.jpg --audio a.wav --audio b.wav --mode batch
    python runpod_client_examples.py --endpoint-id abc123 --image me.jpg --audio hello.mp3 --stream [--mp4]

Inputs may also be URLs (`--image https://...`) or a preset (`--avatar-id anna`). Results are
written to the current directory (or `--out`) as `<job id>.mp4`. A job still running when the
client gives up waiting (`--timeout`, or Ctrl-C) is cancelled, so that it stops costing GPU time.
`--stream` runs the job with `"stream": true` and reads `/stream/{id}`: each MPEG-TS segment is
appended to `<job id>.ts` (or `--out x.ts`) as it arrives, so a player can open the file while it
grows; `--mp4` remuxes the finished file to an MP4 beside it.
`--base-url` points the same calls at any compatible server, e.g. the worker's local test API
(`python -m handler --rp_serve_api`).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import requests

RUNPOD_API = "https://api.runpod.ai/v2"
# /runsync holds the request open for a while and then answers IN_PROGRESS; poll after that.
RUNSYNC_TIMEOUT_SECONDS = 120
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
STREAM_POLL_SECONDS = 0.5


class StreamError(RuntimeError):
    """A streamed job failed, or its items cannot make one valid file."""


@dataclasses.dataclass(frozen=True)
class StreamSegment:
    """One segment, complete (all its parts) and flushed to the output file."""

    index: int
    start_seconds: float
    end_seconds: float
    size_bytes: int
    parts: int
    #: seconds from the /run request to the arrival of the segment's last part
    arrived_seconds: float
    #: the HLS playlist's presigned URL, when the worker sent it with this segment
    playlist_url: str | None = None


@dataclasses.dataclass(frozen=True)
class StreamResult:
    job_id: str
    path: Path
    #: the job's result: the contract's fields plus "segments"
    output: dict[str, Any]
    segments: list[StreamSegment]
    #: seconds from the /run request to the final result
    total_seconds: float

    @property
    def first_segment_seconds(self) -> float | None:
        return self.segments[0].arrived_seconds if self.segments else None


class TalkingHeadClient:
    """A thin client: build the job input, submit it, wait, save the MP4."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        #: per job: seconds its execution timeout policy allows it (None: the endpoint's timeout)
        self.execution_timeout_of: Callable[[dict[str, Any]], float | None] = lambda job_input: None
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    @staticmethod
    def job_input(
        image: str | None = None, audio: str = "", avatar_id: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """`image`/`audio` are local paths or http(s) URLs; options are any other contract field."""
        job: dict[str, Any] = dict(options)
        job.update(_media_field("audio", audio))
        if avatar_id:
            job["avatar_id"] = avatar_id
        elif image:
            job.update(_media_field("image", image))
        return job

    def runsync(self, job_input: dict[str, Any], timeout_seconds: float = 3600) -> dict[str, Any]:
        """Submit and wait in one request; falls back to polling if the job outlives the request."""
        reply = self._post("runsync", job_input, timeout=RUNSYNC_TIMEOUT_SECONDS + 30)
        if reply.get("status") in FINAL_STATES:
            return reply
        return self.wait(reply["id"], timeout_seconds)

    def submit(self, job_input: dict[str, Any], webhook: str | None = None) -> str:
        """Queue a job with /run; returns its id at once."""
        return self._post("run", job_input, timeout=30, webhook=webhook)["id"]

    def wait(self, job_id: str, timeout_seconds: float = 3600) -> dict[str, Any]:
        """Poll /status with a gentle backoff until the job reaches a final state.

        Giving up (the timeout, or Ctrl-C) cancels the job: RunPod stops it on its worker.
        """
        deadline = time.monotonic() + timeout_seconds
        delay = 1.0
        try:
            while True:
                status = self.status(job_id)
                if status.get("status") in FINAL_STATES:
                    return status
                if time.monotonic() > deadline:
                    outcome = "cancelled it" if self._try_cancel(job_id) else "could not cancel it"
                    raise TimeoutError(
                        f"job {job_id} still {status.get('status')} after {timeout_seconds} s; {outcome}"
                    )
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 1.5, 10.0)
        except KeyboardInterrupt:
            self._try_cancel(job_id)
            raise

    def stream(
        self,
        job_input: dict[str, Any],
        out: Path,
        timeout_seconds: float = 3600,
        on_segment: Callable[[StreamSegment], None] | None = None,
        poll_seconds: float = STREAM_POLL_SECONDS,
    ) -> StreamResult:
        """Run a job with `"stream": true` and append its MPEG-TS segments to a file as they arrive.

        `out` is the file to write, or a folder for `<job id>.ts`. The file is flushed after each
        item, so a player can open it while it grows; `on_segment` is called once a segment is
        complete in it. Giving up (the timeout, Ctrl-C, a broken stream) cancels the job.
        """
        if not (out.is_dir() or out.parent.is_dir()):
            raise FileNotFoundError(f"there is no folder {out.parent} to write {out.name} in: create it first")
        submitted = time.monotonic()
        job_id = self.submit({**job_input, "stream": True})
        path = out / f"{job_id}.ts" if out.is_dir() else out
        reader = _SegmentWriter(job_id, path, submitted, on_segment)
        deadline = submitted + timeout_seconds
        job_over = False
        try:
            with open(path, "wb") as file:
                while True:
                    reply = self._stream_poll(job_id, deadline)
                    state = reply.get("status")
                    job_over = state in FINAL_STATES
                    for item in reply.get("stream") or []:
                        reader.take(item.get("output") if isinstance(item, dict) else item, file)
                    if state == "FAILED":
                        raise StreamError(f"job {job_id} FAILED: {reply.get('error') or 'no error given'}")
                    if state in FINAL_STATES and state != "COMPLETED":
                        raise StreamError(f"job {job_id} {state} before it finished")
                    if state == "COMPLETED" or reader.output is not None:
                        return reader.finish(time.monotonic() - submitted)
                    if time.monotonic() > deadline:
                        outcome = "cancelled it" if self._try_cancel(job_id) else "could not cancel it"
                        job_over = True
                        raise TimeoutError(
                            f"job {job_id} still {state} after {timeout_seconds} s "
                            f"({len(reader.segments)} segments in {path}); {outcome}"
                        )
                    time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
        except requests.Timeout as error:
            outcome = "cancelled it" if self._try_cancel(job_id) else "could not cancel it"
            raise TimeoutError(f"job {job_id}: /stream did not answer in time ({error}); {outcome}") from error
        except BaseException:
            if not (job_over or reader.ended):
                self._try_cancel(job_id)
            raise

    def _stream_poll(self, job_id: str, deadline: float) -> dict[str, Any]:
        url = f"{self.base_url}/stream/{job_id}"
        reply = self.session.get(url, timeout=60)
        if reply.status_code == 405:
            # The SDK's local test API answers POST only, and runs the whole job inside that
            # request before answering with every item: the wait is the job's length.
            reply = self.session.post(url, timeout=max(1.0, deadline - time.monotonic()))
        reply.raise_for_status()
        return reply.json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask RunPod to stop a queued or running job (POST /cancel/{id})."""
        reply = self.session.post(f"{self.base_url}/cancel/{job_id}", timeout=30)
        reply.raise_for_status()
        return reply.json()

    def status(self, job_id: str) -> dict[str, Any]:
        url = f"{self.base_url}/status/{job_id}"
        reply = self.session.get(url, timeout=60)
        if reply.status_code == 405:  # the RunPod SDK's local test server only answers POST here
            reply = self.session.post(url, timeout=600)
        reply.raise_for_status()
        return reply.json()

    def _try_cancel(self, job_id: str) -> bool:
        """Cancel without masking why we gave up (the SDK's local test API has no /cancel)."""
        try:
            self.cancel(job_id)
            return True
        except requests.RequestException as error:
            print(f"could not cancel job {job_id}: {error}", file=sys.stderr)
            return False

    def batch(self, job_inputs: Iterable[dict[str, Any]], timeout_seconds: float = 3600) -> list[dict[str, Any]]:
        """Queue every job first (RunPod scales workers out), then collect results in order."""
        job_ids = [self.submit(job_input) for job_input in job_inputs]
        return [self.wait(job_id, timeout_seconds) for job_id in job_ids]

    def _post(self, route: str, job_input: dict[str, Any], timeout: float, **extra: Any) -> dict[str, Any]:
        body = {"input": job_input, **{key: value for key, value in extra.items() if value}}
        execution_timeout = self.execution_timeout_of(job_input)
        if execution_timeout is not None:  # RunPod's per-job policy, in milliseconds
            body["policy"] = {"executionTimeout": int(math.ceil(execution_timeout) * 1000)}
        reply = self.session.post(f"{self.base_url}/{route}", json=body, timeout=timeout)
        reply.raise_for_status()
        return reply.json()


def result_of(status: dict[str, Any]) -> dict[str, Any]:
    """A finished job's result: its output, or, on an endpoint with STREAM_RESULTS=1 (where every
    output is a list of what the job sent), the list's last item. Raises with the job's error."""
    if status.get("status") != "COMPLETED":
        raise RuntimeError(f"job {status.get('id')} {status.get('status')}: {status.get('error')}")
    output = status.get("output")
    if isinstance(output, list):
        output = output[-1] if output else None
    if not isinstance(output, dict):
        raise RuntimeError(f"job {status.get('id')} COMPLETED without a result: its output is {output!r}")
    return output


def save_video(status: dict[str, Any], folder: Path) -> Path:
    """Write a finished job's MP4 (inline or from its presigned URL); raises with the job's error."""
    output = result_of(status)
    target = folder / f"{status['id']}.mp4"
    if "video_base64" in output:
        target.write_bytes(base64.b64decode(output["video_base64"]))
    else:
        with requests.get(output["video_url"], stream=True, timeout=120) as download:
            download.raise_for_status()
            with open(target, "wb") as file:
                for chunk in download.iter_content(1 << 20):
                    file.write(chunk)
    return target


class _SegmentWriter:
    """Checks the stream's items arrive whole and in order, and appends their bytes to the file."""

    def __init__(self, job_id: str, path: Path, submitted: float,
                 on_segment: Callable[[StreamSegment], None] | None) -> None:
        self.job_id = job_id
        self.path = path
        self.submitted = submitted
        self.on_segment = on_segment
        self.segments: list[StreamSegment] = []
        self.output: dict[str, Any] | None = None
        #: the job's last item (its result or its error) has arrived: nothing left to cancel
        self.ended = False
        self._part = 0
        self._parts = 0
        self._size = 0
        self._playlist_url: str | None = None

    def take(self, item: Any, file: Any) -> None:
        """Write one item's bytes, or keep the job's result."""
        if self.output is not None:
            raise self._broken(f"an item arrived after the job's result: {_describe(item)}")
        if not isinstance(item, dict):
            raise self._broken(f"a stream item is not an object: {_describe(item)}")
        if "error" in item:
            self.ended = True
            raise StreamError(f"job {self.job_id} failed: {item['error']}")
        if "segment" not in item:
            self.ended = True
            if self._part:
                raise self._broken(
                    f"the result arrived with segment {len(self.segments)} incomplete "
                    f"({self._part} of {self._parts} parts)"
                )
            self.output = item
            return
        segment = item["segment"]
        index, part, parts = (segment.get(key) for key in ("index", "part", "parts"))
        expected = len(self.segments), self._part
        if (index, part) != expected:
            wanted = f"segment {expected[0]} part {expected[1]}" + (f" of {self._parts}" if self._part else "")
            raise self._broken(f"got segment {index} part {part} where {wanted} was due: an item was lost or reordered")
        if not isinstance(parts, int) or parts < 1 or part >= parts or (self._part and parts != self._parts):
            raise self._broken(f"segment {index} part {part} says it has {parts!r} parts")
        if segment.get("content_type", "video/mp2t") != "video/mp2t":
            raise self._broken(f"segment {index} is {segment.get('content_type')}, not MPEG-TS (video/mp2t)")
        data = base64.b64decode(segment["data_base64"])
        file.write(data)
        file.flush()
        self._size += len(data)
        self._playlist_url = self._playlist_url or item.get("playlist_url") or segment.get("playlist_url")
        if part + 1 < parts:
            self._part, self._parts = part + 1, parts
            return
        done = StreamSegment(
            index=index, start_seconds=float(segment.get("start_seconds", 0.0)),
            end_seconds=float(segment.get("end_seconds", 0.0)), size_bytes=self._size, parts=parts,
            arrived_seconds=time.monotonic() - self.submitted, playlist_url=self._playlist_url,
        )
        self.segments.append(done)
        self._part = self._parts = self._size = 0
        self._playlist_url = None
        if self.on_segment:
            self.on_segment(done)

    def finish(self, total_seconds: float) -> StreamResult:
        if self.output is None:
            raise StreamError(
                f"job {self.job_id} COMPLETED without a result item after {len(self.segments)} segments: "
                "does the endpoint's worker stream? (a worker without streaming answers the other modes)"
            )
        promised = self.output.get("segments")
        if isinstance(promised, int) and promised != len(self.segments):
            raise self._broken(f"the result counts {promised} segments, {len(self.segments)} arrived")
        return StreamResult(self.job_id, self.path, self.output, self.segments, total_seconds)

    def _broken(self, why: str) -> StreamError:
        kept = (f"{self.path} plays up to segment {len(self.segments) - 1}" if self.segments
                else f"{self.path} holds no complete segment")
        return StreamError(f"job {self.job_id}: the stream is broken: {why}; {kept}")


def _describe(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 200 else text[:200] + "..."


def print_segment(segment: StreamSegment) -> None:
    """The command line's progress line: `segment 3  2.88–3.84 s  143 kB  arrived at 4.21 s`."""
    parts = f"  ({segment.parts} parts)" if segment.parts > 1 else ""
    print(f"segment {segment.index}  {segment.start_seconds:.2f}–{segment.end_seconds:.2f} s  "
          f"{segment.size_bytes / 1000:.0f} kB  arrived at {segment.arrived_seconds:.2f} s{parts}", flush=True)
    if segment.playlist_url:
        print(f"HLS playlist: {segment.playlist_url}", flush=True)


def remux_to_mp4(ts_path: Path, mp4_path: Path | None = None) -> Path:
    """Copy the streamed MPEG-TS into an MP4 (no re-encoding), with the index at the front."""
    import imageio_ffmpeg  # the project's own ffmpeg; only this step needs it

    target = mp4_path or ts_path.with_suffix(".mp4")
    # aac_adtstoasc: TS carries AAC with ADTS headers, MP4 wants them stripped (older ffmpeg
    # refuses without it; newer ones insert it themselves).
    done = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(ts_path), "-c", "copy",
         "-bsf:a", "aac_adtstoasc", "-movflags", "+faststart", str(target)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not remux {ts_path} to {target}: {done.stderr.strip()[-500:]}")
    return target


def speech_seconds(job_input: dict[str, Any]) -> float | None:
    """The length of a job's inline speech, read from its header (None: a URL, or unreadable)."""
    if "audio_file" not in job_input:
        return None
    try:
        import soundfile
    except ImportError:
        return None
    try:
        return float(soundfile.info(io.BytesIO(base64.b64decode(job_input["audio_file"]))).duration)
    except (RuntimeError, ValueError, TypeError):  # a format libsndfile cannot read, e.g. MP3 on old builds
        return None


def execution_timeout_for(speed: float, overhead_seconds: float) -> Callable[[dict[str, Any]], float | None]:
    """A job's execution timeout sized from its speech: overhead + seconds x speed (device-seconds
    per second of speech: `python scripts/time_budget.py` prints the measured and default ones)."""

    def timeout(job_input: dict[str, Any]) -> float | None:
        seconds = speech_seconds(job_input)
        return None if seconds is None else overhead_seconds + seconds * speed

    return timeout


def _media_field(kind: str, source: str) -> dict[str, str]:
    if source.startswith(("http://", "https://")):
        return {f"{kind}_url": source}
    return {f"{kind}_file": base64.b64encode(Path(source).read_bytes()).decode("ascii")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint-id", help="the RunPod endpoint id")
    parser.add_argument("--base-url", help="instead of --endpoint-id: the endpoint's base URL")
    parser.add_argument("--image", help="portrait: a path or an http(s) URL")
    parser.add_argument("--avatar-id", help="a preset portrait instead of --image")
    parser.add_argument("--audio", action="append", required=True, help="speech: a path or URL (repeat for a batch)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--mode", choices=("runsync", "async", "batch"), default="runsync")
    how.add_argument("--stream", action="store_true",
                     help="stream the video as MPEG-TS segments into <job id>.ts (or --out x.ts) as they are made")
    parser.add_argument("--mp4", action="store_true", help="with --stream: also remux the finished .ts to an MP4")
    parser.add_argument("--resolution", default="832*480")
    parser.add_argument("--output-type", choices=("auto", "base64", "s3"), default="auto")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="the folder for results (default: here); with --stream also a file name x.ts")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for a job before cancelling it (default 3600)")
    parser.add_argument("--speed", type=float, metavar="S",
                        help="send each job RunPod's execution timeout policy sized from its speech: S seconds "
                             "per second of speech (scripts/time_budget.py lists them) plus --job-overhead")
    parser.add_argument("--job-overhead", type=float, default=120.0, metavar="S",
                        help="with --speed: seconds a job needs besides its speech (default 120)")
    args = parser.parse_args(argv)
    if not (args.base_url or args.endpoint_id):
        parser.error("give --endpoint-id (or --base-url)")
    if not (args.image or args.avatar_id):
        parser.error("give --image or --avatar-id")
    if args.stream and len(args.audio) > 1:
        parser.error("--stream runs one job: give one --audio")
    if args.mp4 and not args.stream:
        parser.error("--mp4 goes with --stream (the other modes deliver an MP4 already)")

    client = TalkingHeadClient(args.base_url or f"{RUNPOD_API}/{args.endpoint_id}", os.environ.get("RUNPOD_API_KEY"))
    if args.speed is not None:
        client.execution_timeout_of = execution_timeout_for(args.speed, args.job_overhead)
    options = {"resolution": args.resolution, "output_type": args.output_type}
    if args.seed is not None:
        options["seed"] = args.seed
    inputs = [client.job_input(args.image, audio, args.avatar_id, **options) for audio in args.audio]

    if args.stream:
        return _stream_command(client, inputs[0], args.out, args.timeout, args.mp4)
    started = time.monotonic()
    try:
        if args.mode == "runsync":
            results = [client.runsync(job_input, args.timeout) for job_input in inputs]
        elif args.mode == "async":
            results = [client.wait(client.submit(job_input), args.timeout) for job_input in inputs]
        else:
            results = client.batch(inputs, args.timeout)
    except TimeoutError as error:
        print(error, file=sys.stderr)
        return 1
    failed = 0
    for status in results:
        try:
            path = save_video(status, args.out)
            print(f"{status['id']}: {path} ({result_of(status)['duration_seconds']:.1f} s of video)")
        except RuntimeError as error:
            failed += 1
            print(error, file=sys.stderr)
    print(f"{len(results) - failed}/{len(results)} done in {time.monotonic() - started:.1f} s")
    return 1 if failed else 0


def _stream_command(client: TalkingHeadClient, job_input: dict[str, Any], out: Path, timeout: float,
                    mp4: bool) -> int:
    try:
        result = client.stream(job_input, out, timeout, on_segment=print_segment)
    except (StreamError, TimeoutError, OSError, requests.RequestException) as error:
        print(error, file=sys.stderr)
        return 1
    output = result.output
    first = result.first_segment_seconds
    print(f"{result.job_id}: {len(result.segments)} segments, {output.get('duration_seconds', 0.0):.2f} s of video, "
          f"{result.path.stat().st_size / 1e6:.1f} MB in {result.path}; first segment after "
          f"{'-' if first is None else f'{first:.2f}'} s, all after {result.total_seconds:.2f} s")
    for field, what in (("playlist_url", "HLS playlist"), ("video_url", "MP4")):
        if output.get(field):
            print(f"{what}: {output[field]}")
    if mp4:
        try:
            print(f"remuxed to {remux_to_mp4(result.path)}")
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
