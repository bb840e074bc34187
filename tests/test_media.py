"""Speech and portrait decoding: formats, sample rates, channels, orientation."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
import soundfile
from PIL import Image

from handler.errors import ErrorCode, JobError
from handler.media import decode_audio, decode_base64, decode_image
from tests.conftest import ASSETS
from tests.mp4_facts import FFMPEG, convert_audio

SPEECH_SECONDS = 123472 / 16000


@pytest.mark.parametrize("suffix, args", [
    ("mp3", ("-ar", "44100", "-ac", "2")),
    ("m4a", ("-ar", "48000", "-ac", "2", "-c:a", "aac")),
    ("ogg", ("-ar", "48000", "-c:a", "libvorbis")),
    ("wav", ("-ar", "8000",)),
])
def test_speech_becomes_16k_mono_of_the_same_length(tmp_path, suffix, args):
    encoded = convert_audio(ASSETS / "speech.wav", tmp_path / f"in.{suffix}", *args)
    workdir = tmp_path / "job"
    workdir.mkdir()
    audio = decode_audio(encoded.read_bytes(), "audio_file", workdir, max_seconds=60)
    assert audio.speech.samples.dtype == np.float32 and audio.speech.samples.ndim == 1
    assert abs(audio.speech.duration_seconds - SPEECH_SECONDS) < 0.08
    assert abs(audio.duration_seconds - audio.speech.duration_seconds) < 1e-3
    mux_info = soundfile.info(str(audio.mux_wav))
    assert mux_info.samplerate == int(args[1]) and mux_info.channels in (1, 2)


def test_decoding_to_16_khz_keeps_the_pitch(tmp_path):
    rate = 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, tone, rate, format="WAV")
    resampled = decode_audio(buffer.getvalue(), "audio_file", tmp_path, max_seconds=10).speech.samples
    assert abs(len(resampled) - 16000) <= 16
    peak_hz = np.argmax(np.abs(np.fft.rfft(resampled))) * 16000 / len(resampled)
    assert abs(peak_hz - 440) <= 1


def test_duration_cap(tmp_path):
    with pytest.raises(JobError) as error:
        decode_audio((ASSETS / "speech.wav").read_bytes(), "audio_url", tmp_path, max_seconds=3)
    assert error.value.code == ErrorCode.TOO_LARGE and "audio_url" in error.value.message


def test_data_uri_and_url_safe_base64():
    assert decode_base64("data:audio/wav;base64,AAEC", "audio_file", 100) == b"\x00\x01\x02"
    assert decode_base64("-_8", "audio_file", 100) == b"\xfb\xff"
    with pytest.raises(JobError) as error:
        decode_base64("A" * 1000, "audio_file", 100)
    assert error.value.code == ErrorCode.TOO_LARGE


def test_exif_orientation_and_transparency():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 8  # displayed rotated 90° counter-clockwise
    Image.new("RGB", (300, 100), (255, 0, 0)).save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), "image_file", 10**7).shape == (300, 100, 3)

    buffer = io.BytesIO()
    Image.new("RGBA", (100, 100), (0, 0, 0, 0)).save(buffer, format="WEBP", lossless=True)
    rgb = decode_image(buffer.getvalue(), "image_file", 10**7)
    assert rgb.shape == (100, 100, 3) and rgb.min() == 255, "transparent areas become white"


def test_compressed_speech_over_the_limit_is_refused(tmp_path):
    encoded = convert_audio(ASSETS / "speech.wav", tmp_path / "long.m4a", "-c:a", "aac")  # decoded by ffmpeg
    with pytest.raises(JobError) as error:
        decode_audio(encoded.read_bytes(), "audio_file", tmp_path, max_seconds=2)
    assert error.value.code == ErrorCode.TOO_LARGE and "over the 2 s limit" in error.value.message


def _silence(path, seconds: float, rate: int, channels: int, *codec: str):
    """`seconds` of silence in `channels` channels at `rate`: megabytes of PCM in a small file."""
    pan = f"pan={channels}c|" + "|".join(f"c{index}=c0" for index in range(channels))
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono",
                    "-t", str(seconds), "-af", pan, *codec, str(path)], check=True, timeout=120)
    return path.read_bytes()


def test_many_channels_at_a_high_rate_are_refused_before_decoding(tmp_path):
    """8 channels at 192 kHz, 20 s: 31 million samples in a small FLAC, over 60 s of 48 kHz stereo."""
    bomb = _silence(tmp_path / "bomb.flac", 20, 192_000, 8, "-c:a", "flac")
    assert len(bomb) < 2_000_000
    workdir = tmp_path / "job"
    workdir.mkdir()
    with pytest.raises(JobError) as error:
        decode_audio(bomb, "audio_file", workdir, max_seconds=60)
    assert error.value.code == ErrorCode.TOO_LARGE
    assert error.value.message.startswith("audio_file decodes to 31 million samples (8 channels at 192000 Hz")
    assert list(workdir.iterdir()) == [], "nothing decoded, nothing left"


def test_more_channels_than_speech_needs_are_refused(tmp_path):
    bomb = _silence(tmp_path / "bomb.wv", 10, 48_000, 16, "-c:a", "wavpack", "-sample_fmt", "s16p")
    with pytest.raises(JobError) as error:
        decode_audio(bomb, "audio_url", tmp_path, max_seconds=60)
    assert error.value.code == ErrorCode.TOO_LARGE
    assert error.value.message == ("audio_url has 16 audio channels, over the limit of 8; send mono or stereo "
                                   "speech.")


def test_surround_speech_within_the_bounds_becomes_16k_mono_and_a_48k_mux_copy(tmp_path):
    audio = decode_audio(_silence(tmp_path / "surround.flac", 2, 96_000, 6, "-c:a", "flac"), "audio_file",
                         tmp_path, max_seconds=60)
    assert audio.speech.samples.dtype == np.float32 and abs(len(audio.speech.samples) - 32_000) <= 16
    info = soundfile.info(str(audio.mux_wav))
    assert (info.samplerate, info.channels, info.subtype) == (48_000, 1, "PCM_16")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["speech.wav", "surround.flac"]


def test_a_16_bit_greyscale_png_decodes_to_its_own_tones_not_white():
    tones = np.linspace(0, 65535, 128 * 96, dtype=np.float64).reshape(96, 128).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(tones).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")  # a real 16-bit PNG
    rgb = decode_image(buffer.getvalue(), "image_file", 10_000_000)
    assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint8
    expected = np.round(tones / 257.0).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert rgb.mean() == pytest.approx(127.5, abs=1.0)
