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
import soundfile
from PIL import Image, ImageOps, UnidentifiedImageError

from handler.errors import ErrorCode, JobError
from model.base import SPEECH_SAMPLE_RATE, Speech

DATA_URI_PREFIX = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
IMAGE_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "MPO": "jpeg"}
MIN_SPEECH_SECONDS = 0.1
MIN_IMAGE_SIDE = 64
FFMPEG_TIMEOUT_SECONDS = 300


@dataclasses.dataclass(frozen=True)
class DecodedAudio:
    """The speech for the model, and a clean WAV of the original for muxing into the MP4."""

    speech: Speech
    mux_wav: Path
    duration_seconds: float


def decode_base64(value: str, field: str, max_bytes: int) -> bytes:
    payload = DATA_URI_PREFIX.sub("", value, count=1)
    payload = re.sub(r"\s+", "", payload)
    if len(payload) * 3 // 4 > max_bytes:
        raise JobError(
            ErrorCode.TOO_LARGE,
            f"{field} decodes to more than {max_bytes // (1024 * 1024)} MiB; send a smaller file or a URL.",
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
    """Decode speech with soundfile, or with ffmpeg for what soundfile cannot read (mp3, m4a, ...)."""
    source = workdir / "speech-input"
    source.write_bytes(data)
    try:
        samples, rate = _read_soundfile(source, field, max_seconds)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        decoded = _ffmpeg_to_wav(source, field, workdir, max_seconds)
        samples, rate = _read_soundfile(decoded, field, max_seconds)
    samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0).clip(-1.0, 1.0)
    duration = samples.shape[0] / rate
    if duration < MIN_SPEECH_SECONDS:
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} holds only {duration:.2f} s of audio; send at least {MIN_SPEECH_SECONDS} s of speech.",
        )
    if samples.shape[1] > 2:
        samples = samples.mean(axis=1, keepdims=True)
    mux_wav = workdir / "speech.wav"
    soundfile.write(mux_wav, samples, rate, subtype="PCM_16")
    mono = samples.mean(axis=1).astype(np.float32)
    speech = Speech(samples=resample(mono, rate, SPEECH_SAMPLE_RATE))
    return DecodedAudio(speech=speech, mux_wav=mux_wav, duration_seconds=duration)


def _read_soundfile(path: Path, field: str, max_seconds: float) -> tuple[np.ndarray, int]:
    info = soundfile.info(str(path))
    if info.samplerate <= 0 or info.frames <= 0:
        raise JobError(ErrorCode.UNSUPPORTED_MEDIA, f"{field} holds no audio samples; send a recording of speech.")
    _check_duration(info.frames / info.samplerate, field, max_seconds)
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return samples, int(rate)


def _check_duration(seconds: float, field: str, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise JobError(
            ErrorCode.TOO_LARGE,
            f"{field} is {seconds:.1f} s long, over the {max_seconds:g} s limit; send shorter speech "
            "(or raise max_duration_seconds / MAX_AUDIO_SECONDS).",
        )


def _ffmpeg_to_wav(source: Path, field: str, workdir: Path, max_seconds: float) -> Path:
    target = workdir / "speech-decoded.wav"
    # Decoding stops just past the limit, so a tiny file that expands to hours never fills the disk;
    # the duration check that follows then refuses it.
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(source),
        "-map", "0:a:0", "-vn", "-t", f"{max_seconds + 1:.3f}", "-c:a", "pcm_f32le", "-f", "wav", str(target),
    ]
    try:
        result = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} took too long to decode; send wav, mp3, flac, ogg or m4a.",
        ) from None
    if result.returncode != 0 or not target.exists():
        raise JobError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"{field} is not audio that can be decoded; send wav, mp3, flac, ogg/opus or m4a/aac.",
        )
    return target


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling of a whole signal by trimming or padding its spectrum."""
    if rate == target_rate:
        return samples.astype(np.float32)
    target_length = max(1, int(round(len(samples) * target_rate / rate)))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    bins = target_length // 2 + 1
    if bins <= len(spectrum):
        spectrum = spectrum[:bins]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins - len(spectrum), dtype=spectrum.dtype)])
    resampled = np.fft.irfft(spectrum, n=target_length) * (target_length / len(samples))
    return resampled.astype(np.float32)


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
