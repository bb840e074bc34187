"""Encode frames to an MP4 as they are produced: H.264 yuv420p, AAC from the speech, +faststart.

Frames go straight into ffmpeg's stdin, so memory stays flat however long the video is. The
result's frame size is decided here (`output_size`): the backend's, or a dubbed video's own, to
which ffmpeg scales the backend's frames as it encodes them.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Self

import imageio_ffmpeg
import numpy as np

from model.base import PreparedPortrait, SourceVideo

CRF = "20"
AUDIO_BITRATE = "128k"


def output_size(portrait: PreparedPortrait, source_video: SourceVideo | None) -> tuple[int, int]:
    """The result's width and height: a video to dub keeps its frame size (each side rounded down
    to even, as yuv420p needs); otherwise the frames' own, as the backend makes them."""
    if source_video is None:
        return portrait.width, portrait.height
    return max(2, source_video.width - source_video.width % 2), max(2, source_video.height - source_video.height % 2)


class VideoEncodingError(RuntimeError):
    """ffmpeg refused the frames or died; the message carries the end of its log."""


class FfmpegEncoder:
    """`write()` RGB uint8 batches (n, H, W, 3) into an ffmpeg that muxes them with the speech, then
    `close()`; use as a context manager. Subclasses give the output's arguments.

    `output` is the encoded size when it differs from the frames' (width x height): ffmpeg scales them.
    """

    def __init__(
        self, width: int, height: int, fps: float, audio_wav: Path, output: tuple[int, int] | None = None,
    ) -> None:
        out_width, out_height = output or (width, height)
        if out_width % 2 or out_height % 2:
            raise ValueError(f"yuv420p needs even sides, got {out_width}x{out_height}")
        self.width = width
        self.height = height
        #: the encoded video's size
        self.output_width, self.output_height = out_width, out_height
        scale = [] if (out_width, out_height) == (width, height) else [
            "-vf", f"scale={out_width}:{out_height}:flags=bicubic,setsar=1"]
        self.fps = fps
        self.frames_written = 0
        self._log = tempfile.TemporaryFile()
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "pipe:0",
            "-i", str(audio_wav),
            "-map", "0:v:0", "-map", "1:a:0", *scale,
            "-c:v", "libx264", "-preset", "veryfast", "-crf", CRF, "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", AUDIO_BITRATE,
            *self._output_arguments(),
        ]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        assert self._process.stdin is not None, "stdin=PIPE gives the process a pipe"
        self._frames_in: IO[bytes] = self._process.stdin

    def _output_arguments(self) -> list[str]:
        raise NotImplementedError

    def write(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 frames (n, {self.height}, {self.width}, 3), got {frames.dtype} {frames.shape}"
            )
        try:
            self._frames_in.write(np.ascontiguousarray(frames).tobytes())
            self._frames_in.flush()
        except BrokenPipeError:
            self._process.wait()
            raise VideoEncodingError(f"ffmpeg stopped while encoding: {self._log_tail()}") from None
        self.frames_written += len(frames)

    def close(self) -> None:
        """Finish the output; raises VideoEncodingError if ffmpeg failed."""
        self._close_stdin()
        returncode = self._process.wait()
        tail = self._log_tail()
        self._log.close()
        if returncode != 0:
            raise VideoEncodingError(f"ffmpeg exited with {returncode}: {tail}")

    def abort(self) -> None:
        """Stop ffmpeg without finishing the output (the job failed)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._close_stdin()
        self._log.close()

    def _close_stdin(self) -> None:
        # ffmpeg may already be gone (it failed, or was killed): its pipe is then broken.
        with contextlib.suppress(BrokenPipeError):
            self._frames_in.close()

    def _log_tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-800:].decode("utf-8", "replace").strip()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Mp4Writer(FfmpegEncoder):
    """The whole video as one MP4 at `path`, its index first (+faststart) so that it plays as it downloads."""

    def __init__(
        self, path: Path, width: int, height: int, fps: float, audio_wav: Path, output: tuple[int, int] | None = None,
    ) -> None:
        self.path = path
        super().__init__(width, height, fps, audio_wav, output)

    def _output_arguments(self) -> list[str]:
        return ["-movflags", "+faststart", str(self.path)]
