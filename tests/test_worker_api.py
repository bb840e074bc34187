"""The worker end to end over RunPod's local HTTP API: jobs in, MP4s out, decoded and measured."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from handler.sample import sample_job_input
from tests.conftest import ASSETS
from tests.mp4_facts import convert_audio, mp4_facts, read_frames

SPEECH_SECONDS = 123472 / 16000  # assets/speech.wav


def _save_video(reply: dict, tmp_path: Path) -> Path:
    assert reply["status"] == "COMPLETED", reply
    output = reply["output"]
    path = tmp_path / "out.mp4"
    path.write_bytes(base64.b64decode(output["video_base64"]))
    assert output["file_size_bytes"] == path.stat().st_size
    return path


def _assert_plays_everywhere(path: Path, output: dict, speech_seconds: float) -> None:
    facts = mp4_facts(path)
    assert facts.video_codec == "h264" and facts.pixel_format == "yuv420p"
    assert facts.audio_codec == "aac"
    assert facts.moov_before_mdat, "+faststart: the moov atom must come first"
    assert (facts.width, facts.height, facts.num_frames) == (output["width"], output["height"], output["num_frames"])
    assert facts.fps == output["fps"]
    assert abs(facts.video_seconds - speech_seconds) <= 1.0 / facts.fps
    assert abs(facts.audio_seconds - speech_seconds) <= 0.05
    assert output["duration_seconds"] == pytest.approx(facts.video_seconds, abs=1e-3)


@pytest.fixture(scope="module")
def sample_reply(plain_worker) -> dict:
    """The sample job at its default size, once: what it gives is checked by two tests."""
    return plain_worker.runsync(sample_job_input())


def test_runsync_sample_job(sample_reply, tmp_path):
    reply = sample_reply
    path = _save_video(reply, tmp_path)
    output = reply["output"]
    _assert_plays_everywhere(path, output, SPEECH_SECONDS)
    assert (output["width"], output["height"]) == (512, 512)
    assert output["success"] is True and output["model"] == "lite" and output["seed"] == 42
    assert output["request_id"].startswith("test-")
    assert set(output["timings"]) == {"decode", "prepare", "generate", "encode", "upload"}
    assert output["generation_time_seconds"] >= sum(output["timings"].values()) - 0.01


def test_mouth_moves_with_speech_and_rests_in_silence(sample_reply, tmp_path):
    from model.lite.landmarks import FaceLandmarker

    reply = sample_reply
    path = _save_video(reply, tmp_path)
    output = reply["output"]
    frames = read_frames(path, output["width"], output["height"])
    x0, y0, x1, y1 = FaceLandmarker().detect(frames[0]).mouth_box()
    pad = (x1 - x0) // 2
    mouths = frames[:, max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad].astype(np.float32)

    import soundfile
    speech, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    hop = rate // int(output["fps"])
    loudness = np.array([np.sqrt(np.mean(speech[i * hop:(i + 1) * hop] ** 2) + 1e-12) for i in range(len(mouths))])
    # Frames well inside the pause: silent for 0.3 s on both sides, so the release has finished.
    silent_mask = np.convolve(loudness < 0.003, np.ones(15), mode="same") >= 15
    assert silent_mask.sum() >= 10, "the sample speech has a pause of about a second"
    resting = np.median(mouths[silent_mask], axis=0)
    change = np.abs(mouths - resting).mean(axis=(1, 2, 3))
    loud = change[loudness > np.percentile(loudness, 75)]
    silent = change[silent_mask]
    assert np.median(loud) > 4 * np.median(silent) + 2.0, (np.median(loud), np.median(silent))
    assert np.max(silent) < 3.0, "the mouth rests in silence (head sway only)"


def test_run_then_status(plain_worker, tmp_path):
    job = requests.post(f"{plain_worker.url}/run", json={"input": sample_job_input(resolution="128*128")}, timeout=30)
    job.raise_for_status()
    assert job.json()["status"] == "IN_PROGRESS"
    # The SDK's local server runs the job when its status is asked for, and only answers POST.
    status = requests.post(f"{plain_worker.url}/status/{job.json()['id']}", timeout=300).json()
    path = _save_video(status, tmp_path)
    _assert_plays_everywhere(path, status["output"], SPEECH_SECONDS)
    assert max(status["output"]["width"], status["output"]["height"]) <= 256


def test_url_inputs_stereo_mp3_and_large_rotated_photo(plain_worker, media_server, tmp_path):
    base, folder = media_server
    convert_audio(ASSETS / "speech.wav", folder / "speech.mp3", "-ar", "44100", "-ac", "2", "-b:a", "128k")
    # A large non-square photo, stored sideways with an EXIF orientation tag, as phones do.
    portrait = Image.open(ASSETS / "portrait.jpg").resize((1600, 1600))
    canvas = Image.new("RGB", (2400, 1600), (40, 60, 90))
    canvas.paste(portrait, (400, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    canvas.transpose(Image.Transpose.ROTATE_90).save(folder / "sideways.jpg", exif=exif, quality=90)

    reply = plain_worker.runsync({
        "audio_url": f"{base}/speech.mp3", "image_url": f"{base}/redirect?to=/sideways.jpg", "seed": 7,
    })
    path = _save_video(reply, tmp_path)
    output = reply["output"]
    _assert_plays_everywhere(path, output, SPEECH_SECONDS)
    assert output["width"] > output["height"], "EXIF orientation applied: the photo is landscape"
    assert output["width"] * output["height"] <= 832 * 480
    assert abs(output["width"] / output["height"] - 1.5) < 0.05


@pytest.mark.parametrize("suffix, args", [
    ("m4a", ("-ar", "44100", "-ac", "2", "-c:a", "aac")),
    ("ogg", ("-ar", "48000", "-c:a", "libopus")),
    ("flac", ("-ar", "22050",)),
])
def test_audio_formats(plain_worker, tmp_path, suffix, args):
    encoded = convert_audio(ASSETS / "speech.wav", tmp_path / f"speech.{suffix}", *args)
    data_uri = f"data:audio/{suffix};base64," + base64.b64encode(encoded.read_bytes()).decode()
    reply = plain_worker.runsync(sample_job_input(audio_file=data_uri, resolution="128*128"))
    path = _save_video(reply, tmp_path)
    # lossy codecs pad a few ms; the video follows the decoded audio
    facts = mp4_facts(path)
    assert abs(facts.video_seconds - SPEECH_SECONDS) <= 0.1
    assert abs(facts.video_seconds - facts.audio_seconds) <= 1.0 / facts.fps


def test_preset_avatar_skips_the_portrait(worker, tmp_path):
    audio = base64.b64encode((ASSETS / "speech.wav").read_bytes()).decode()
    reply = worker.runsync(
        {"audio_file": audio, "avatar_id": "astronaut", "output_type": "base64", "resolution": "832*480"}
    )
    path = _save_video(reply, tmp_path)
    _assert_plays_everywhere(path, reply["output"], SPEECH_SECONDS)
    log = worker.log()
    assert f"job {reply['id']}: portrait ready (avatar_id)" in log
    # prepared once, at worker start, for the default budget; the job reused it
    assert log.count("preset astronaut prepared for a 399360 pixel budget") == 1
    assert log.index("preset astronaut prepared") < log.index("worker ready")


def test_an_unknown_preset_is_refused_without_naming_the_others(worker):
    audio = base64.b64encode((ASSETS / "speech.wav").read_bytes()).decode()
    reply = worker.runsync({"audio_file": audio, "avatar_id": "nobody"})
    assert reply["status"] == "FAILED", reply
    assert reply["error"].startswith("INVALID_INPUT: avatar_id 'nobody' is not a preset"), reply["error"]
    assert "is not a preset on this endpoint" in reply["error"]
    assert "astronaut" not in reply["error"] and len(reply["error"]) < 300


def test_same_seed_same_video(plain_worker, tmp_path):
    first = plain_worker.runsync(sample_job_input(resolution="128*128", seed=5))["output"]["video_base64"]
    again = plain_worker.runsync(sample_job_input(resolution="128*128", seed=5))["output"]["video_base64"]
    other = plain_worker.runsync(sample_job_input(resolution="128*128", seed=6))["output"]["video_base64"]
    assert first == again
    assert first != other
