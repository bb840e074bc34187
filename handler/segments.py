"""Encode frames into playable segments while they are produced: HLS with MPEG-TS segments.

Why MPEG-TS rather than fragmented MP4: a TS segment carries its own stream tables and starts on
a keyframe, so it plays on its own, and segments concatenated in order are one valid file that a
player opens while it still grows, with no init segment to keep in front; every HLS player plays
the playlist (Safari natively, hls.js in other browsers, ffmpeg, VLC).

One ffmpeg encodes the whole video, so the AAC stream is continuous: no gap or click where two
segments meet. Its HLS muxer closes a segment when the keyframe that starts the next one arrives,
so the keyframes are placed on the *last* frame of a backend's batch (`SegmentPlan`): a segment
leaves as soon as the batch that completes it is encoded, not when the next batch exists. x264
runs without lookahead or B-frames (zerolatency), so that a frame written is a frame muxed.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from handler.video import FfmpegEncoder, VideoEncodingError

# A segment lasts at least this long (except the first, which is one batch, and the last). Each
# segment starts on a keyframe, and x264 without lookahead or B-frames already makes a video
# about 1.5x larger: at 1 s the segments of a lite video were 5.3x the size of its MP4 (7.3 vs
# 1.4 MB a minute at 512x512), at 2 s about half that. Only the first segment sets the wait for
# the first frame; later ones need only keep ahead of playback.
MIN_SEGMENT_SECONDS = 2.0
CONTENT_TYPE = "video/mp2t"
PLAYLIST_NAME = "index.m3u8"
# ffmpeg numbers the files from 0, as the segments are indexed
SEGMENT_FILE_PATTERN = "segment-%05d.ts"
# ffmpeg has the frames; muxing one keyframe takes milliseconds. Past this it is stuck.
SEGMENT_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.005
# Copying packets runs at disk speed; an hour of video is a few hundred MB.
REMUX_TIMEOUT_SECONDS = 300.0


@dataclasses.dataclass(frozen=True)
class Segment:
    """One finished segment: frames [start_frame, end_frame) of the video, with their audio."""

    index: int
    start_frame: int
    end_frame: int
    fps: float
    path: Path

    @property
    def start_seconds(self) -> float:
        return round(self.start_frame / self.fps, 3)

    @property
    def end_seconds(self) -> float:
        return round(self.end_frame / self.fps, 3)


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """Where segments start: frame 0, the last frame of the first batch, then every `step` frames.

    `step` is a whole number of later batches, at least MIN_SEGMENT_SECONDS long, so that every
    cut falls on the last frame of a batch.
    """

    first_cut: int
    step: int

    @classmethod
    def for_batches(cls, batches: tuple[int, int], fps: float) -> SegmentPlan:
        first, later = batches
        return cls(first_cut=first - 1, step=later * math.ceil(MIN_SEGMENT_SECONDS * fps / later))

    def starts(self, num_frames: int) -> list[int]:
        """The first frame of every segment of a video of `num_frames` frames."""
        cuts = range(self.first_cut, num_frames, self.step)
        return [0, *(cut for cut in cuts if cut > 0)]

    def keyframe_expression(self) -> str:
        """ffmpeg's `-force_key_frames` expression for the same frames (n counts from 0)."""
        return f"expr:eq(n,0)+gte(n,{self.first_cut})*eq(mod(n-{self.first_cut},{self.step}),0)"


class SegmentWriter(FfmpegEncoder):
    """`write()` frames; each segment, once complete, goes to `on_segment` in order.

    A segment is handed over after the `write()` that completes it returns, and the rest at
    `close()`. The segments are files in `directory`; `playlist` is ffmpeg's own.
    """

    def __init__(
        self, directory: Path, width: int, height: int, fps: float, audio_wav: Path, num_frames: int,
        plan: SegmentPlan, on_segment: Callable[[Segment], None], output: tuple[int, int] | None = None,
    ) -> None:
        self.directory = directory
        self.playlist = directory / PLAYLIST_NAME
        self._plan = plan
        self._starts = plan.starts(num_frames)
        self._ends = [*self._starts[1:], num_frames]
        self._on_segment = on_segment
        self.segments_done = 0
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(width, height, fps, audio_wav, output)

    def _output_arguments(self) -> list[str]:
        # Keyframes only where the plan cuts; a target duration below any segment's, so that the
        # muxer cuts at each of them.
        return [
            "-tune", "zerolatency", "-force_key_frames", self._plan.keyframe_expression(), "-forced-idr", "1",
            "-x264-params", "keyint=infinite:scenecut=0", "-fps_mode", "passthrough",
            "-f", "hls", "-hls_time", f"{0.5 / self.fps:.6f}", "-hls_list_size", "0",
            "-hls_playlist_type", "event", "-hls_flags", "temp_file+independent_segments",
            "-hls_segment_type", "mpegts", "-hls_segment_filename", str(self.directory / SEGMENT_FILE_PATTERN),
            str(self.playlist),
        ]

    def write(self, frames: np.ndarray) -> None:
        super().write(frames)
        if self.frames_written >= self._ends[-1]:
            # The last frames: ffmpeg may hold the end of the audio, and the segments with it,
            # until its input ends; close() hands them over.
            return
        # A segment is complete once the keyframe after it is muxed, i.e. written here.
        while self.segments_done + 1 < len(self._starts) and self._starts[self.segments_done + 1] < self.frames_written:
            self._hand_over(wait=True)

    def close(self) -> None:
        super().close()
        if self.frames_written != self._ends[-1]:
            return  # the caller reports the wrong frame count; the plan no longer fits the video
        while self.segments_done < len(self._starts):
            self._hand_over(wait=False)

    def _hand_over(self, wait: bool) -> None:
        index = self.segments_done
        path = self.directory / (SEGMENT_FILE_PATTERN % index)
        deadline = time.monotonic() + SEGMENT_WAIT_SECONDS
        while not path.exists():
            if not wait:
                raise VideoEncodingError(f"ffmpeg finished without writing segment {index}")
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise VideoEncodingError(f"ffmpeg did not finish segment {index}: {self._log_tail()}")
            time.sleep(POLL_SECONDS)
        self.segments_done += 1
        self._on_segment(Segment(index, self._starts[index], self._ends[index], self.fps, path))


def remux_to_mp4(playlist: Path, target: Path) -> None:
    """The segments as one MP4, index first, without encoding again (milliseconds per minute of video)."""
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(playlist),
        "-c", "copy", "-movflags", "+faststart", str(target),
    ]
    done = subprocess.run(command, capture_output=True, timeout=REMUX_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise VideoEncodingError(f"ffmpeg could not join the segments: {done.stderr[-800:].decode(errors='replace')}")
