"""Two speakers (handler/speakers.py) and the refusals of the new inputs (handler/schema.py): the
layouts' lengths and mix, and, on lite, a video or a second speech refused by name before any media work."""

from __future__ import annotations

import base64
import wave
from typing import Any

import numpy as np
import pytest

from handler.job import Worker
from handler.settings import WorkerSettings
from handler.speakers import lay_out, write_wav
from model.base import SPEECH_SAMPLE_RATE, Speech
from model.lite.backend import LiteBackend

# never reached: every refusal here comes before anything is fetched
UNREACHABLE = "http://127.0.0.1:9/never-fetched"


def speech(*values: float) -> Speech:
    return Speech(samples=np.array(values, dtype=np.float32))


def test_parallel_speeches_start_together_and_the_shorter_is_padded_with_silence():
    layout = lay_out(speech(0.5, -0.25, 0.125), speech(0.25, 0.25), "parallel")
    assert [track.samples.tolist() for track in layout.tracks] == [[0.5, -0.25, 0.125], [0.25, 0.25, 0.0]]
    assert layout.mix.samples.tolist() == [0.75, 0.0, 0.125]


def test_sequential_speeches_follow_each_other_each_silent_while_the_other_speaks():
    layout = lay_out(speech(0.5, -0.25), speech(0.125, 0.25, -0.5), "sequential")
    assert [track.samples.tolist() for track in layout.tracks] == [[0.5, -0.25, 0, 0, 0], [0, 0, 0.125, 0.25, -0.5]]
    assert layout.mix.samples.tolist() == [0.5, -0.25, 0.125, 0.25, -0.5]


def test_the_mix_is_clipped_to_full_scale_as_the_references_16_bit_wav_is(tmp_path):
    layout = lay_out(speech(0.75, -0.75), speech(0.5, -0.5), "parallel")
    assert layout.mix.samples.tolist() == [1.0, -1.0]
    with wave.open(str(write_wav(layout.mix, tmp_path / "mix.wav"))) as written:
        assert (written.getframerate(), written.getnchannels(), written.getnframes()) == (SPEECH_SAMPLE_RATE, 1, 2)
        assert np.frombuffer(written.readframes(2), "<i2").tolist() == [32767, -32767]


@pytest.fixture(scope="module")
def lite_worker() -> Worker:
    return Worker(settings=WorkerSettings.from_env({"ALLOW_PRIVATE_URLS": "1"}), backend=LiteBackend(), presets=None)


@pytest.fixture
def media_work(monkeypatch) -> list[str]:
    """Every fetch or decode the worker starts (none should)."""
    import handler.job

    calls: list[str] = []
    for name in ("fetch_url", "decode_base64", "decode_audio", "decode_image", "open_source_video"):
        monkeypatch.setattr(handler.job, name, lambda *args, _name=name, **kwargs: calls.append(_name))
    return calls


def refusal(worker: Worker, **job_input: Any) -> str:
    result = worker.handle({"id": "refused", "input": job_input})
    return result["error"]


def test_lite_refuses_a_video_by_name_saying_what_it_takes(lite_worker, media_work):
    error = refusal(lite_worker, audio_url=UNREACHABLE, video_url=UNREACHABLE)
    assert error.startswith("INVALID_INPUT: video_url is a video to dub, and this endpoint's backend (lite) takes no "
                            "video: it animates one portrait. Send image_file, image_url or avatar_id instead"), error
    assert media_work == []


def test_lite_refuses_a_second_speech_by_name(lite_worker, media_work):
    error = refusal(lite_worker, audio_url=UNREACHABLE, audio_url_2=UNREACHABLE, image_url=UNREACHABLE)
    assert error.startswith("INVALID_INPUT: audio_url_2 is a second speaker's speech, and this endpoint's backend "
                            "(lite) animates one speaker: send one speech (audio_file or audio_url)"), error
    assert media_work == []


def test_speaker_timing_without_a_second_speech_is_refused(lite_worker, media_work):
    error = refusal(lite_worker, audio_url=UNREACHABLE, image_url=UNREACHABLE, speaker_timing="sequential")
    assert error == ("INVALID_INPUT: speaker_timing lays out two speakers' speeches in time, and this job sends one: "
                     "send the second speaker's as audio_file_2 or audio_url_2, or leave speaker_timing out.")
    assert media_work == []


def test_a_second_speech_without_a_first_is_refused(lite_worker, media_work):
    error = refusal(lite_worker, audio_file_2=base64.b64encode(b"RIFF").decode(), image_url=UNREACHABLE)
    assert error.startswith("INVALID_INPUT: audio_file_2 is the second speaker's speech, and no first speech was "
                            "given: send the first speaker's as audio_file or audio_url"), error
    assert media_work == []


@pytest.mark.parametrize("job_input, sentence", [
    ({"video_url": UNREACHABLE, "image_url": UNREACHABLE},
     "INVALID_INPUT: image_url and video_url were both given: send exactly one of image_file, image_url, avatar_id, "
     "video_file, video_url."),
    ({"audio_file_2": "UklGRg==", "audio_url_2": UNREACHABLE, "image_url": UNREACHABLE},
     "INVALID_INPUT: audio_file_2 and audio_url_2 were both given: send exactly one of audio_file_2, audio_url_2."),
    ({"audio_file_2": "UklGRg==", "image_url": UNREACHABLE, "speaker_timing": "together"},
     "INVALID_INPUT: speaker_timing must be one of parallel, sequential, not 'together'."),
])
def test_one_source_of_each_and_a_known_timing(lite_worker, media_work, job_input, sentence):
    assert refusal(lite_worker, audio_url=UNREACHABLE, **job_input) == sentence
    assert media_work == []


def test_a_live_session_takes_no_video(lite_worker):
    from handler.errors import JobError

    with pytest.raises(JobError, match="^INVALID_INPUT: video_file is a field of a rendering job, not of a live"):
        lite_worker.live_request({"video_file": "AAAA"})
