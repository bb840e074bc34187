"""A job's video to dub (`video_file` / `video_url`): model/base.py's SourceVideo, from ffmpeg.

Its bytes come bounded (MAX_VIDEO_BYTES: handler/media.py's base64 decoding or handler/fetch.py's
guarded download, both before any of it is decoded) and are written into the job's scratch folder,
removed with it. Its header is then read by ffmpeg under a deadline, and refused before a frame is
decoded: no video stream, a still image, no duration, longer than MAX_VIDEO_SECONDS, a frame larger
than MAX_VIDEO_PIXELS. Sizes are as displayed: a phone's rotation (the display matrix) is applied
by ffmpeg when it decodes, so a portrait video recorded as 1920x1080 with a 90 degree rotation is
1080x1920. Its first frame is decoded at once (the portrait, and proof that ffmpeg decodes it).

`frames(fps)` streams the rest through one ffmpeg per call (its fps filter, raw RGB on a pipe),
each read under a deadline and the job's stop; the process is killed and reaped when the iterator
is closed, a read fails or the job stops, and `close()` (at the job's end) kills any left.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Self

import imageio_ffmpeg
import numpy as np

from handler.cancel import JobControl, current_control
from handler.errors import ErrorCode, JobError
from handler.media import FFMPEG_TIMEOUT_SECONDS
from model.base import SourceVideo

# Reading a header takes milliseconds; a file that keeps ffmpeg longer is refused.
PROBE_TIMEOUT_SECONDS = 30.0
# One frame out of the decoder: milliseconds even at 4K. Past this ffmpeg is stuck.
FRAME_READ_TIMEOUT_SECONDS = 60.0
# How often a read waiting on ffmpeg looks at the job's stop.
STOP_POLL_SECONDS = 0.1
# ffmpeg's demuxers of single images: a picture is a portrait (image_file), not a video.
IMAGE_DEMUXERS = re.compile(r"(_pipe|^image2)$")
INPUT_FORMAT = re.compile(r"^Input #0, (?P<format>[^\s]+?), from ", re.MULTILINE)
DURATION = re.compile(r"^\s*Duration: (?:(?P<h>\d+):(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)|N/A)", re.MULTILINE)
VIDEO_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: Video: [^\n]*?, (?P<width>\d+)x(?P<height>\d+)", re.MULTILINE)
ROTATION = re.compile(r"display ?matrix: rotation of (?P<degrees>-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)
NEXT_STREAM = re.compile(r"^\s*Stream #", re.MULTILINE)
FORMATS_TAKEN = "an mp4, mov, webm or mkv"


@dataclasses.dataclass(frozen=True)
class VideoLimits:
    """MAX_VIDEO_SECONDS and MAX_VIDEO_PIXELS (handler/settings.py)."""

    max_seconds: float
    max_pixels: int


@dataclasses.dataclass(frozen=True)
class VideoHeader:
    """What the header says: the frame size as displayed (rotation applied) and the duration."""

    width: int
    height: int
    duration_seconds: float


class FfmpegSourceVideo(SourceVideo):
    """A probed video file in the job's scratch folder; `open_source_video` makes one."""

    def __init__(self, path: Path, field: str, header: VideoHeader, first_frame: np.ndarray, max_seconds: float):
        self.path = path
        self.field = field
        self.width = header.width
        self.height = header.height
        self.duration_seconds = header.duration_seconds
        self._first_frame = first_frame
        self._max_seconds = max_seconds
        self._decoders: set[subprocess.Popen[bytes]] = set()

    def first_frame(self) -> np.ndarray:
        return self._first_frame.copy()

    @property
    def decoders_running(self) -> int:
        """ffmpeg processes of `frames` iterators not yet closed."""
        return len(self._decoders)

    def frames(self, fps: float) -> Iterator[np.ndarray]:
        if not fps > 0:
            raise ValueError(f"fps must be positive, not {fps}")
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(self.path),
            "-map", "0:v:0", "-an", "-sn", "-dn", "-t", f"{self._max_seconds:.3f}",
            # scale: every frame at the first's size, should the stream change size partway
            "-vf", f"fps={fps:g},scale={self.width}:{self.height}", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        ]
        return self._stream(command, current_control())

    def _stream(self, command: list[str], control: JobControl | None) -> Iterator[np.ndarray]:
        frame_bytes = self.width * self.height * 3
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
            self._decoders.add(process)
            try:
                assert process.stdout is not None, "stdout=PIPE gives the process a pipe"
                while True:
                    data = _read_frame(process.stdout, frame_bytes, control, self.field)
                    if data is None:
                        break
                    yield np.frombuffer(data, dtype=np.uint8).reshape(self.height, self.width, 3)
                if process.wait(timeout=FRAME_READ_TIMEOUT_SECONDS) != 0:
                    log.seek(0)
                    tail = log.read()[-300:].decode("utf-8", "replace").strip()
                    raise JobError(ErrorCode.UNSUPPORTED_MEDIA, (
                        f"{self.field} stopped decoding partway ({tail or 'ffmpeg failed'}); send the original "
                        f"file, {FORMATS_TAKEN}."))
            finally:
                _end(process)
                self._decoders.discard(process)

    def close(self) -> None:
        """Kill every decoder still running (the job ended with iterators still open)."""
        for process in list(self._decoders):
            _end(process)
        self._decoders.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_source_video(data: bytes, field: str, workdir: Path, limits: VideoLimits) -> FfmpegSourceVideo:
    """The video in `data` (already within MAX_VIDEO_BYTES), written to `workdir` and probed.

    Raises JobError naming `field`: UNSUPPORTED_MEDIA for what is not a video ffmpeg decodes,
    TOO_LARGE past MAX_VIDEO_SECONDS or MAX_VIDEO_PIXELS, before any frame is decoded.
    """
    path = workdir / "source-video"
    path.write_bytes(data)
    header = probe(path, field, limits)
    first = _first_frame(path, field, header)
    return FfmpegSourceVideo(path, field, header, first, limits.max_seconds)


def probe(path: Path, field: str, limits: VideoLimits) -> VideoHeader:
    """The header of the video at `path`, checked against `limits`; decodes nothing."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    report = _run(command, field, PROBE_TIMEOUT_SECONDS).stderr.decode("utf-8", "replace")
    stream = VIDEO_STREAM.search(report)
    if stream is None or "(attached pic)" in report[stream.start():report.find("\n", stream.start())]:
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA,
                       f"{field} is not a video that can be decoded; send {FORMATS_TAKEN}.")
    container = INPUT_FORMAT.search(report)
    if container is not None and IMAGE_DEMUXERS.search(container["format"]):
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA, (
            f"{field} is a still image, not a video; send a picture as image_file or image_url, or a video as "
            f"{FORMATS_TAKEN}."))
    width, height = int(stream["width"]), int(stream["height"])
    if width * height > limits.max_pixels:
        raise JobError(ErrorCode.TOO_LARGE, (
            f"{field} is {width}x{height} pixels a frame, over the {limits.max_pixels:,} pixel limit for a video "
            "(MAX_VIDEO_PIXELS); send a smaller video."))
    if width < 2 or height < 2:
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA, f"{field} is only {width}x{height} pixels; send a real video.")
    seconds = _duration(report)
    if seconds is None:
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA, (
            f"{field} does not say how long it is (no duration in its header); send {FORMATS_TAKEN}."))
    if seconds > limits.max_seconds:
        raise JobError(ErrorCode.TOO_LARGE, (
            f"{field} is {seconds:.1f} s long, over the {limits.max_seconds:g} s limit for a video "
            "(MAX_VIDEO_SECONDS); send a shorter video."))
    # the display matrix of this stream (the text up to the next stream), in whole quarter turns
    block = report[stream.end():]
    following = NEXT_STREAM.search(block)
    rotation = ROTATION.search(block[:following.start()] if following else block)
    quarter_turns = round(float(rotation["degrees"]) / 90) % 2 if rotation else 0
    if quarter_turns:
        width, height = height, width
    return VideoHeader(width, height, seconds)


def _duration(report: str) -> float | None:
    found = DURATION.search(report)
    if found is None or found["h"] is None:
        return None
    return int(found["h"]) * 3600 + int(found["m"]) * 60 + float(found["s"])


def _first_frame(path: Path, field: str, header: VideoHeader) -> np.ndarray:
    """The first frame, as displayed; what proves that ffmpeg decodes the video."""
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path),
        "-map", "0:v:0", "-an", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]
    done = _run(command, field, FFMPEG_TIMEOUT_SECONDS)
    expected = header.width * header.height * 3
    if done.returncode != 0 or len(done.stdout) != expected:
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA, (
            f"{field} has a video stream that cannot be decoded; send the original file, {FORMATS_TAKEN}."))
    return np.frombuffer(done.stdout, dtype=np.uint8).reshape(header.height, header.width, 3).copy()


def _run(command: list[str], field: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA, (
            f"{field} took too long to read; send the original file, {FORMATS_TAKEN}.")) from None


def _read_frame(pipe: IO[bytes], frame_bytes: int, control: JobControl | None, field: str) -> bytes | None:
    """One frame's bytes from ffmpeg's pipe; None at its end. Every wait ends by the read deadline
    (UNSUPPORTED_MEDIA) or the job's stop (JobCancelled)."""
    chunks: list[bytes] = []
    received = 0
    deadline = time.monotonic() + FRAME_READ_TIMEOUT_SECONDS
    while received < frame_bytes:
        if control is not None:
            control.check()
        left = deadline - time.monotonic()
        if left <= 0:
            raise JobError(ErrorCode.UNSUPPORTED_MEDIA, (
                f"{field} took longer than {FRAME_READ_TIMEOUT_SECONDS:g} s to decode one frame; send the "
                f"original file, {FORMATS_TAKEN}."))
        ready, _, _ = select.select([pipe], [], [], min(left, STOP_POLL_SECONDS))
        if not ready:
            continue
        # the descriptor itself: select() cannot see what a buffered reader already holds
        chunk = os.read(pipe.fileno(), frame_bytes - received)
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    if received == 0:
        return None
    if received < frame_bytes:
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA, (
            f"{field} ended partway through a frame; send the original file, {FORMATS_TAKEN}."))
    return b"".join(chunks)


def _end(process: subprocess.Popen[bytes]) -> None:
    """Kill the decoder if it still runs, and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()
