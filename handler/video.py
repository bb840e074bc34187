"""Encode frames to an MP4 as they are produced: H.264 yuv420p, AAC from the speech, +faststart.

Frames go straight into ffmpeg's stdin, so memory stays flat however long the video is.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Self

import imageio_ffmpeg
import numpy as np

CRF = "20"
AUDIO_BITRATE = "128k"


class VideoEncodingError(RuntimeError):
    """ffmpeg refused the frames or died; the message carries the end of its log."""


class FfmpegEncoder:
    """`write()` RGB uint8 batches (n, H, W, 3) into an ffmpeg that muxes them with the speech, then
    `close()`; use as a context manager. Subclasses give the output's arguments."""

    def __init__(self, width: int, height: int, fps: float, audio_wav: Path) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs even sides, got {width}x{height}")
        self.width = width
        self.height = height
        self.fps = fps
        self.frames_written = 0
        self._log = tempfile.TemporaryFile()
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "pipe:0",
            "-i", str(audio_wav),
            "-map", "0:v:0", "-map", "1:a:0",
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

    def __init__(self, path: Path, width: int, height: int, fps: float, audio_wav: Path) -> None:
        self.path = path
        super().__init__(width, height, fps, audio_wav)

    def _output_arguments(self) -> list[str]:
        return ["-movflags", "+faststart", str(self.path)]
