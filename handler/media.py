"""Decode the job's media: base64 payloads, speech (any ffmpeg-readable audio) and portraits."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from handler.errors import ErrorCode, JobError
from model.base import SPEECH_SAMPLE_RATE, Speech

DATA_URI_PREFIX = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
IMAGE_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "MPO": "jpeg"}
MIN_SPEECH_SECONDS = 0.1
MIN_IMAGE_SIDE = 64
FFMPEG_TIMEOUT_SECONDS = 300
# Speech needs neither: more channels or a higher rate are refused before decoding.
MAX_AUDIO_CHANNELS = 8
MAX_AUDIO_SAMPLE_RATE = 192_000
# The samples per second of speech a job may decode, whatever its channels and rate: 48 kHz stereo.
MAX_DECODED_CHANNEL_RATE = 2 * 48_000
# The muxing copy keeps the speech's own rate up to this (AAC in the MP4 takes it).
MAX_MUX_SAMPLE_RATE = 48_000
# ffmpeg's report on the first decoded frame (the ashowinfo filter) and on the input's header.
AUDIO_FRAME_INFO = re.compile(r"Parsed_ashowinfo.*? channels:(?P<channels>\d+) .*?rate:(?P<rate>\d+)")
AUDIO_DURATION = re.compile(r"^\s*Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class DecodedAudio:
    """The speech for the model, and a clean WAV of the original for muxing into the MP4."""

    speech: Speech
    mux_wav: Path
    duration_seconds: float


def byte_size(num_bytes: int) -> str:
    """A limit in bytes as a sentence gives it: whole MiB, or bytes below one."""
    return f"{num_bytes // (1024 * 1024)} MiB" if num_bytes >= 1024 * 1024 else f"{num_bytes} bytes"


def decode_base64(value: str, field: str, max_bytes: int) -> bytes:
    payload = DATA_URI_PREFIX.sub("", value, count=1)
    payload = re.sub(r"\s+", "", payload)
    if len(payload) * 3 // 4 > max_bytes:
        raise JobError(
            ErrorCode.TOO_LARGE,
            f"{field} decodes to more than {byte_size(max_bytes)}; send a smaller file or a URL.",
        )
    if "-" in payload or "_" in payload:
        payload = payload.replace("-", "+").replace("_", "/")
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"{field} is not valid base64; send the file's bytes base64-encoded (plain or as a data: URI).",
        ) from None
    if not data:
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} is empty; send the file's bytes base64-encoded.")
    return data


def decode_audio(data: bytes, field: str, workdir: Path, max_seconds: float) -> DecodedAudio:
    """Decode speech (anything ffmpeg reads) to 16 kHz mono for the model and a WAV for muxing.

    A small file can hold hours of many-channel audio: its header is read first (channels, rate,
    duration) and refused past the bounds below, and ffmpeg then streams it straight to what is
    kept (16 kHz mono in memory, at most stereo at 48 kHz on disk), never the full multichannel PCM.
    """
    source = workdir / "speech-input"
    source.write_bytes(data)
    try:
        channels, rate = _probe_audio(source, field, max_seconds)
        mux_wav = workdir / "speech.wav"
        samples = _ffmpeg_decode(source, field, mux_wav, channels, rate, max_seconds)
    finally:
        source.unlink(missing_ok=True)
    duration = len(samples) / SPEECH_SAMPLE_RATE
    if duration < MIN_SPEECH_SECONDS:
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} holds only {duration:.2f} s of audio; send at least {MIN_SPEECH_SECONDS} s of speech.",
        )
    check_duration(duration, field, max_seconds)
    samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0).clip(-1.0, 1.0)
    return DecodedAudio(speech=Speech(samples=samples), mux_wav=mux_wav, duration_seconds=duration)


def _probe_audio(source: Path, field: str, max_seconds: float) -> tuple[int, int]:
    """The first audio stream's channels and sample rate, from its header and first frame only;
    refuses (TOO_LARGE) what would decode past the bounds, before it is decoded."""
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(source),
        "-map", "0:a:0", "-vn", "-frames:a", "1", "-af", "ashowinfo", "-f", "null", "-",
    ]
    report = _run_ffmpeg(command, field).stderr.decode("utf-8", "replace")
    frame = AUDIO_FRAME_INFO.search(report)
    if frame is None:
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} is not audio that can be decoded; send wav, mp3, flac, ogg/opus or m4a/aac.",
        )
    channels, rate = int(frame["channels"]), int(frame["rate"])
    if channels > MAX_AUDIO_CHANNELS:
        raise JobError(
            ErrorCode.TOO_LARGE,
            f"{field} has {channels} audio channels, over the limit of {MAX_AUDIO_CHANNELS}; send mono or "
            "stereo speech.",
        )
    if rate > MAX_AUDIO_SAMPLE_RATE or rate <= 0:
        raise JobError(
            ErrorCode.TOO_LARGE,
            f"{field} has a sample rate of {rate} Hz, outside 1 to {MAX_AUDIO_SAMPLE_RATE} Hz; send speech at "
            "48 kHz or less.",
        )
    declared = AUDIO_DURATION.search(report)
    seconds = max_seconds + 1
    if declared is not None:
        hours, minutes, rest = declared.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(rest)
        check_duration(seconds, field, max_seconds)
    # However many channels and however fast, no more samples than MAX_DECODED_CHANNEL_RATE's worth:
    # what a file that declares no duration may decode is bounded by the decoding's own cut.
    decoded = channels * rate * min(seconds, max_seconds + 1)
    if decoded > MAX_DECODED_CHANNEL_RATE * max_seconds:
        raise JobError(
            ErrorCode.TOO_LARGE,
            f"{field} decodes to {decoded / 1e6:.0f} million samples ({channels} channels at {rate} Hz for "
            f"{seconds:.1f} s), over the {MAX_DECODED_CHANNEL_RATE * max_seconds / 1e6:.0f} million of "
            f"{max_seconds:g} s of 48 kHz stereo; send mono or stereo speech at 48 kHz or less.",
        )
    return channels, rate


def _ffmpeg_decode(
    source: Path, field: str, mux_wav: Path, channels: int, rate: int, max_seconds: float,
) -> np.ndarray:
    """One ffmpeg pass: 16 kHz mono float32 to memory, the muxing WAV (mono or stereo, at most
    48 kHz, 16-bit) to `mux_wav`; both cut just past the limit, so a file that lies about its
    length never holds more than that."""
    cut = ["-t", f"{max_seconds + 1:.3f}"]
    mux_channels = channels if channels <= 2 else 1
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(source),
        "-map", "0:a:0", "-vn", *cut, "-ac", "1", "-ar", str(SPEECH_SAMPLE_RATE), "-f", "f32le", "pipe:1",
        "-map", "0:a:0", "-vn", *cut, "-ac", str(mux_channels), "-ar", str(min(rate, MAX_MUX_SAMPLE_RATE)),
        "-c:a", "pcm_s16le", "-f", "wav", str(mux_wav),
    ]
    result = _run_ffmpeg(command, field)
    if result.returncode != 0 or not mux_wav.exists():
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} is not audio that can be decoded; send wav, mp3, flac, ogg/opus or m4a/aac.",
        )
    return np.frombuffer(result.stdout, dtype="<f4").astype(np.float32)


def _run_ffmpeg(command: list[str], field: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} took too long to decode; send wav, mp3, flac, ogg or m4a.",
        ) from None


def check_duration(seconds: float, field: str, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise JobError(
            ErrorCode.TOO_LARGE,
            f"{field} is {seconds:.1f} s long, over the {max_seconds:g} s limit; send shorter speech "
            "(or raise max_duration_seconds / MAX_AUDIO_SECONDS).",
        )


# Pillow's modes for 16-bit greyscale (a PNG's comes as I;16 or, in older versions, I).
SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(data: bytes, field: str, max_pixels: int) -> np.ndarray:
    """RGB uint8 (H, W, 3), EXIF orientation applied; refuses decompression bombs before decoding."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise JobError(
            ErrorCode.TOO_LARGE,
            f"{field} claims an enormous pixel size (a decompression bomb); send a normal photo.",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} is not an image that can be read; send a jpeg, png or webp.",
        ) from None
    if image.format not in IMAGE_FORMATS:
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} is a {image.format or 'unknown'} image; send a jpeg, png or webp.",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise JobError(
            ErrorCode.TOO_LARGE,
            f"{field} is {width}x{height} pixels, over the {max_pixels:,} pixel limit; send a smaller image.",
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} is only {width}x{height} pixels; send a portrait at least {MIN_IMAGE_SIDE} pixels on each side.",
        )
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in SIXTEEN_BIT_GREY_MODES:
            # a 16-bit greyscale PNG: convert("RGB") would clip its 0..65535 to 255, nearly white
            grey = np.asarray(image, dtype=np.float64) / 257.0
            image = Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8), mode="L")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            image = background
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError):
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} is a damaged image that cannot be decoded; send the original file.",
        ) from None
    return np.ascontiguousarray(rgb)
