"""Decode an MP4 with the same ffmpeg the worker uses, and measure what a viewer would get."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@dataclasses.dataclass(frozen=True)
class Mp4Facts:
    video_codec: str
    pixel_format: str
    width: int
    height: int
    fps: float
    num_frames: int
    audio_codec: str | None
    audio_seconds: float
    moov_before_mdat: bool

    @property
    def video_seconds(self) -> float:
        return self.num_frames / self.fps


def mp4_facts(path: Path) -> Mp4Facts:
    header = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    video = re.search(
        r"Stream #\S+.*?Video: (\w+)[^,]*, (\w+)[^,]*(?:\([^)]*\))?, (\d+)x(\d+).*?, ([\d.]+) fps", header
    )
    assert video, f"no video stream in {path}:\n{header}"
    audio = re.search(r"Stream #\S+.*?Audio: (\w+)", header)
    frames = read_frames(path, int(video.group(3)), int(video.group(4)), gray=True)
    return Mp4Facts(
        video_codec=video.group(1),
        pixel_format=video.group(2),
        width=int(video.group(3)),
        height=int(video.group(4)),
        fps=float(video.group(5)),
        num_frames=len(frames),
        audio_codec=audio.group(1) if audio else None,
        audio_seconds=len(read_audio(path)) / 16000 if audio else 0.0,
        moov_before_mdat=_atom_offset(path, b"moov") < _atom_offset(path, b"mdat"),
    )


def read_frames(path: Path, width: int, height: int, gray: bool = False) -> np.ndarray:
    pix_fmt, channels = ("gray", 1) if gray else ("rgb24", 3)
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", pix_fmt, "pipe:1"],
        capture_output=True, check=True,
    ).stdout
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, channels)
    return frames[..., 0] if gray else frames


def read_audio(path: Path, rate: int = 16000) -> np.ndarray:
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(rate),
         "-f", "f32le", "pipe:1"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.float32)


def convert_audio(source: Path, target: Path, *args: str) -> Path:
    """Re-encode speech (format from the suffix) with extra ffmpeg args such as -ar 44100 -ac 2."""
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(source), *args, str(target)], check=True)
    return target


def _atom_offset(path: Path, atom: bytes) -> int:
    data = path.read_bytes()
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        if data[offset + 4:offset + 8] == atom:
            return offset
        if size == 1:
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        if size < 8:
            break
        offset += size
    return len(data)
