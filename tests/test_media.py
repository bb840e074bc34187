"""Speech and portrait decoding: formats, sample rates, channels, orientation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
from PIL import Image

from handler.errors import ErrorCode, JobError
from handler.media import decode_audio, decode_base64, decode_image, resample
from tests.conftest import ASSETS
from tests.mp4_facts import convert_audio

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


def test_resampling_keeps_the_pitch():
    rate = 44100
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    resampled = resample(tone, rate, 16000)
    assert len(resampled) == 16000
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
