"""Every bad input gets its error code and a sentence naming the field; the worker keeps serving."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from handler.sample import sample_job_input
from tests.conftest import ASSETS

WAV_B64 = base64.b64encode((ASSETS / "speech.wav").read_bytes()).decode()
JPEG_B64 = base64.b64encode((ASSETS / "portrait.jpg").read_bytes()).decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return _b64(buffer.getvalue())


def _bomb_png(width: int, height: int) -> str:
    """A valid PNG header claiming a huge canvas, with a few bytes of compressed data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 1024)
    return _b64(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _silent_wav(seconds: float) -> str:
    import soundfile
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(16000 * seconds), np.float32), 16000, format="WAV")
    return _b64(buffer.getvalue())


def _gif() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), "white").save(buffer, format="GIF")
    return _b64(buffer.getvalue())


def _sample(**fields):
    job = sample_job_input(**fields)
    return {key: value for key, value in job.items() if value is not None}


BAD_INPUTS = [
    # (case, job input, expected code, a word the message must name)
    ("no audio", {"image_file": JPEG_B64}, "INVALID_INPUT", "audio_file"),
    ("no image", {"audio_file": WAV_B64}, "INVALID_INPUT", "image_file"),
    ("two audio sources", _sample(audio_url="http://127.0.0.1:1/a.wav"), "INVALID_INPUT", "audio_url"),
    ("two image sources", _sample(avatar_id="astronaut"), "INVALID_INPUT", "avatar_id"),
    ("audio not a string", _sample(audio_file=123), "INVALID_INPUT", "audio_file"),
    ("broken base64", _sample(audio_file="@@@not-base64@@@"), "INVALID_INPUT", "audio_file"),
    ("empty base64", _sample(image_file="===="), "INVALID_INPUT", "image_file"),
    ("seed negative", _sample(seed=-3), "INVALID_INPUT", "seed"),
    ("seed a string", _sample(seed="42"), "INVALID_INPUT", "seed"),
    ("seed a bool", _sample(seed=True), "INVALID_INPUT", "seed"),
    ("resolution garbage", _sample(resolution="large"), "INVALID_INPUT", "resolution"),
    ("resolution tiny", _sample(resolution="8*8"), "INVALID_INPUT", "resolution"),
    ("steps zero", _sample(num_inference_steps=0), "INVALID_INPUT", "num_inference_steps"),
    ("guidance a list", _sample(guidance_scale=[1]), "INVALID_INPUT", "guidance_scale"),
    ("solver unknown", _sample(sample_solver="euler"), "INVALID_INPUT", "sample_solver"),
    ("shift negative", _sample(sample_shift=-1), "INVALID_INPUT", "sample_shift"),
    ("prompt a number", _sample(prompt=5), "INVALID_INPUT", "prompt"),
    ("output_type unknown", _sample(output_type="email"), "INVALID_INPUT", "output_type"),
    ("s3 without bucket", _sample(output_type="s3"), "INVALID_INPUT", "bucket"),
    ("max duration negative", _sample(max_duration_seconds=-1), "INVALID_INPUT", "max_duration_seconds"),
    ("audio is garbage", _sample(audio_file=_b64(b"\x00\x01garbage" * 500)), "UNSUPPORTED_MEDIA", "audio_file"),
    ("audio is an image", _sample(audio_file=JPEG_B64), "UNSUPPORTED_MEDIA", "audio_file"),
    ("audio too short", _sample(audio_file=_silent_wav(0.02)), "UNSUPPORTED_MEDIA", "audio_file"),
    ("audio too long for the job", _sample(max_duration_seconds=2), "TOO_LARGE", "audio_file"),
    ("image is garbage", _sample(image_file=_b64(b"GIF89a-nope" * 100)), "UNSUPPORTED_MEDIA", "image_file"),
    ("image is audio", _sample(image_file=WAV_B64), "UNSUPPORTED_MEDIA", "image_file"),
    ("image is a gif", _sample(image_file=_gif()), "UNSUPPORTED_MEDIA", "image_file"),
    ("image too small", _sample(image_file=_png(np.zeros((20, 20, 3), np.uint8))), "UNSUPPORTED_MEDIA", "image_file"),
    ("decompression bomb", _sample(image_file=_bomb_png(40000, 40000)), "TOO_LARGE", "image_file"),
    ("no face", _sample(image_file=_png(np.full((256, 256, 3), 200, np.uint8))), "NO_FACE", "image_file"),
    ("unknown avatar", {"audio_file": WAV_B64, "avatar_id": "nobody"}, "INVALID_INPUT", "avatar_id"),
    ("avatar path traversal", {"audio_file": WAV_B64, "avatar_id": "../etc"}, "INVALID_INPUT", "avatar_id"),
    ("avatar absolute path", {"audio_file": WAV_B64, "avatar_id": "/etc/passwd"}, "INVALID_INPUT", "avatar_id"),
    ("url with bad scheme", {"audio_file": WAV_B64, "image_url": "file:///etc/passwd"}, "INVALID_INPUT", "image_url"),
    ("url unreachable", {"audio_file": WAV_B64, "image_url": "http://127.0.0.1:9/none.jpg"},
     "FETCH_FAILED", "image_url"),
]


@pytest.mark.parametrize("case, job_input, code, field", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_fails_with_its_code(plain_worker, case, job_input, code, field):
    reply = plain_worker.runsync(job_input)
    assert reply["status"] == "FAILED", reply
    error = reply["error"]
    assert error.startswith(f"{code}: "), error
    assert field in error, error
    assert "Traceback" not in error and "File \"" not in error


@pytest.mark.parametrize("job", [{"id": "a", "input": "hello"}, {"id": "b"}, {"id": "c", "input": [1, 2]}])
def test_input_that_is_not_an_object(job):
    """RunPod's API refuses these before the worker; the handler still answers them clearly."""
    from handler.startup import start_worker

    error = start_worker({"MODEL_BACKEND": "lite"}).handle(job)["error"]
    assert error.startswith('INVALID_INPUT: "input" must be a JSON object'), error


def test_blocked_urls_without_opt_in(tmp_path_factory):
    """Without ALLOW_PRIVATE_URLS, loopback, private and metadata addresses are refused."""
    from tests.conftest import WorkerProcess

    process = WorkerProcess({"MODEL_BACKEND": "lite"}, tmp_path_factory.mktemp("guarded-worker"))
    try:
        for url in ("http://127.0.0.1:1/a.jpg", "http://169.254.169.254/latest/meta-data/",
                    "http://10.0.0.8/a.jpg", "http://[::1]/a.jpg", "http://localhost/a.jpg"):
            reply = process.runsync({"audio_file": WAV_B64, "image_url": url})
            assert reply["status"] == "FAILED", (url, reply)
            assert reply["error"].startswith("FETCH_FAILED: image_url points to a non-public address"), reply
    finally:
        process.stop()


def test_worker_keeps_serving_after_failures(plain_worker):
    for case in BAD_INPUTS[:5]:
        plain_worker.runsync(case[1] if isinstance(case[1], dict) else {"x": 1})
    reply = plain_worker.runsync(_sample(resolution="128*128"))
    assert reply["status"] == "COMPLETED", reply
    assert reply["output"]["success"] is True
    assert len(base64.b64decode(reply["output"]["video_base64"])) == reply["output"]["file_size_bytes"]


def test_no_temporary_files_left_behind(plain_worker):
    plain_worker.runsync(_sample(audio_file=_b64(b"junk" * 100)))
    plain_worker.runsync(_sample(resolution="128*128"))
    leftovers = [path for path in plain_worker.tmpdir.rglob("*")]
    assert leftovers == []
