"""Jobs with a video to dub and two speakers, end to end in the worker, on a tiny test-only backend
that takes both: the result keeps the video's frame size and shows its frames, lasts the mix of the
two speeches, and the backend gets each speaker's track placed in time."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import subprocess
import wave
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from handler.job import Worker
from handler.settings import WorkerSettings
from handler.video import output_size
from model.base import (
    SPEECH_SAMPLE_RATE,
    GenerationOptions,
    NoFaceError,
    PreparedPortrait,
    ProgressCallback,
    SourceVideo,
    Speech,
    TalkingHeadBackend,
    num_frames_for,
)
from model.declaration import InputSupport
from model.lite.declaration import DECLARATION as LITE_DECLARATION
from tests.mp4_facts import FFMPEG, mp4_facts, read_audio, read_frames
from tests.test_source_video import BLUE, HEIGHT, RED, WIDTH, close_to, make_video


class DubbingBackend(TalkingHeadBackend):
    """Takes a video and two speakers: renders each of the video's frames at half its size (so the
    encoder must scale them back), and keeps what it was given."""

    declaration = dataclasses.replace(
        LITE_DECLARATION, name="dubbing-test", backend_class="tests.test_dubbing_jobs:DubbingBackend",
        inputs=InputSupport(video=True, speakers=2),
    )
    name = "dubbing-test"

    def __init__(self) -> None:
        self.speech: Speech | None = None
        self.options: GenerationOptions | None = None

    @classmethod
    def load(cls, model_dir: Path, settings: Mapping[str, Any]) -> DubbingBackend:
        return cls()

    def prepare_portrait(self, image: np.ndarray, max_area: int) -> PreparedPortrait:
        if image.mean() < 10:
            raise NoFaceError("No face was found in the portrait; send a photo of a face.")
        height, width = image.shape[:2]
        return PreparedPortrait(width=width // 2, height=height // 2, features=image)

    def generate(
        self, portrait: PreparedPortrait, speech: Speech, options: GenerationOptions, on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        self.speech, self.options = speech, options
        fps = self.frame_rate(options.mode)
        total = num_frames_for(speech.duration_seconds, fps)
        assert options.source_video is not None, "these jobs all dub a video"
        # a generator (the worker also ends its decoder when the job ends); closed as soon as done with
        frames = cast(Generator[np.ndarray, None, None], options.source_video.frames(fps))
        with contextlib.closing(frames) as source:
            frame = portrait.features
            made = 0
            while made < total:
                batch = []
                for _ in range(min(self.frame_batches(options.mode)[1], total - made)):
                    frame = next(source, frame)  # the video's last frame held past its end
                    batch.append(frame[::2, ::2])
                made += len(batch)
                on_progress(made / total, f"frame {made}")
                yield np.stack(batch)


def tone(seconds: float, hertz: float, amplitude: float = 0.3) -> bytes:
    """A 16 kHz mono 16-bit WAV of a sine."""
    times = np.arange(int(seconds * SPEECH_SAMPLE_RATE)) / SPEECH_SAMPLE_RATE
    pcm = np.round(amplitude * np.sin(2 * np.pi * hertz * times) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SPEECH_SAMPLE_RATE)
        wav.writeframes(pcm.tobytes())
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("dubbing")
    return {
        "video": b64(make_video(folder / "colours.mp4", "red", "blue").read_bytes()),
        "black": b64(make_video(folder / "black.mp4", "black").read_bytes()),
        "first": b64(tone(1.0, 220)),
        "second": b64(tone(0.6, 440)),
    }


@pytest.fixture(scope="module")
def backend() -> DubbingBackend:
    return DubbingBackend()


def worker(backend: TalkingHeadBackend, **env: str) -> Worker:
    return Worker(settings=WorkerSettings.from_env(env), backend=backend, presets=None)


def mp4_of(result: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "result.mp4"
    path.write_bytes(base64.b64decode(result["video_base64"]))
    return path


def test_a_two_speaker_dub_keeps_the_videos_size_and_frames_and_lasts_both_speeches(backend, media, tmp_path):
    job = {"id": "dub", "input": {"video_file": media["video"], "audio_file": media["first"],
                                  "audio_file_2": media["second"], "speaker_timing": "sequential",
                                  "output_type": "base64", "seed": 1}}
    result = worker(backend).handle(job)
    assert result.get("success"), result
    assert (result["width"], result["height"], result["num_frames"]) == (WIDTH, HEIGHT, 40)
    assert result["duration_seconds"] == 1.6
    video = mp4_of(result, tmp_path)
    facts = mp4_facts(video)
    assert (facts.width, facts.height, facts.num_frames) == (WIDTH, HEIGHT, 40)
    assert facts.audio_seconds == pytest.approx(1.6, abs=0.05)
    frames = read_frames(video, WIDTH, HEIGHT)
    # the video's first second is red, its second blue: the 25 fps frames follow it
    assert all(close_to(frame, RED) for frame in frames[:24]) and all(close_to(frame, BLUE) for frame in frames[26:])

    assert backend.speech is not None and backend.options is not None
    first, second = (track.samples for track in backend.options.speakers)
    assert len(first) == len(second) == len(backend.speech.samples) == int(1.6 * SPEECH_SAMPLE_RATE)
    one = int(1.0 * SPEECH_SAMPLE_RATE)
    assert not first[one:].any() and not second[:one].any()  # each silent while the other speaks
    assert np.abs(first[:one]).max() == pytest.approx(0.3, abs=0.01) and np.abs(second[one:]).max() > 0.29
    assert np.array_equal(backend.speech.samples, np.clip(first + second, -1, 1))
    # the MP4's audio is that mix
    heard = read_audio(video)[: len(backend.speech.samples)]
    assert np.corrcoef(heard[: len(heard) - 800], backend.speech.samples[: len(heard) - 800])[0, 1] > 0.95


def test_parallel_speakers_last_the_longer_speech_and_a_stream_keeps_the_videos_size(backend, media, tmp_path):
    items: list[dict[str, Any]] = []
    job = {"id": "dub-stream", "input": {"video_file": media["video"], "audio_file": media["first"],
                                         "audio_file_2": media["second"], "stream": True, "seed": 1}}
    result = worker(backend).handle(job, emit=items.append)
    assert result.get("success"), result
    assert (result["width"], result["height"], result["num_frames"]) == (WIDTH, HEIGHT, 25)
    assert backend.options is not None
    assert [len(track.samples) for track in backend.options.speakers] == [SPEECH_SAMPLE_RATE] * 2
    segments = tmp_path / "segments.ts"
    segments.write_bytes(b"".join(base64.b64decode(item["segment"]["data_base64"]) for item in items))
    facts = mp4_facts(segments)
    assert (facts.width, facts.height, facts.num_frames) == (WIDTH, HEIGHT, 25)


@pytest.mark.parametrize("env, job_input, sentence", [
    ({"MAX_VIDEO_SECONDS": "1.5"}, {},
     "TOO_LARGE: video_file is 2.0 s long, over the 1.5 s limit for a video (MAX_VIDEO_SECONDS); send a shorter "
     "video."),
    ({"MAX_VIDEO_BYTES": "1024"}, {},
     "TOO_LARGE: video_file decodes to more than 1024 bytes; send a smaller file or a URL."),
    ({"MAX_VIDEO_PIXELS": "3000"}, {},
     "TOO_LARGE: video_file is 64x48 pixels a frame, over the 3,000 pixel limit for a video (MAX_VIDEO_PIXELS)"),
    ({}, {"max_duration_seconds": 1.2, "audio_file_2": "second", "speaker_timing": "sequential"},
     "TOO_LARGE: audio_file with audio_file_2 laid out as speaker_timing 'sequential' is 1.6 s long, over the 1.2 s "
     "limit; send shorter speech"),
    ({}, {"video_file": "black"},
     "NO_FACE: video_file: the video's first frame has no face to animate (No face was found in the portrait; send a "
     "photo of a face.); send a video whose first frame shows the face."),
])
def test_a_dub_past_a_limit_or_without_a_face_is_refused_naming_the_field(backend, media, env, job_input, sentence):
    fields = {"video_file": "video", "audio_file": "first", **job_input}
    job_fields = {name: media.get(value, value) if isinstance(value, str) else value for name, value in fields.items()}
    result = worker(backend, **env).handle({"id": "refused", "input": job_fields})
    assert result["error"].startswith(sentence), result


@dataclasses.dataclass
class _SizedVideo(SourceVideo):
    width: int
    height: int
    duration_seconds: float = 1.0

    def first_frame(self) -> np.ndarray:
        raise NotImplementedError

    def frames(self, fps: float) -> Iterator[np.ndarray]:
        raise NotImplementedError


def test_one_place_decides_the_output_size():
    portrait = PreparedPortrait(width=32, height=24, features=None)
    assert output_size(portrait, None) == (32, 24)
    assert output_size(portrait, _SizedVideo(63, 47)) == (62, 46)  # yuv420p needs even sides
    assert output_size(portrait, _SizedVideo(1080, 1920)) == (1080, 1920)


def test_the_encoder_scales_the_backends_frames_to_the_output_size(tmp_path):
    from handler.speakers import write_wav
    from handler.video import Mp4Writer

    audio = write_wav(Speech(samples=np.zeros(SPEECH_SAMPLE_RATE // 5, np.float32)), tmp_path / "silence.wav")
    frames = np.zeros((5, 24, 32, 3), np.uint8)
    frames[:, :, :16] = RED  # the left half red
    with Mp4Writer(tmp_path / "scaled.mp4", 32, 24, 25.0, audio, output=(64, 48)) as writer:
        writer.write(frames)
    decoded = read_frames(tmp_path / "scaled.mp4", 64, 48)
    assert decoded.shape == (5, 48, 64, 3)
    assert close_to(decoded[0][:, :28], RED) and close_to(decoded[0][:, 36:], (0, 0, 0))
    assert subprocess.run([FFMPEG, "-v", "error", "-i", str(tmp_path / "scaled.mp4"), "-f", "null", "-"],
                          capture_output=True).returncode == 0


def test_a_video_and_a_second_speech_by_url_come_through_the_guarded_fetch(backend, media, media_server):
    base, folder = media_server
    (folder / "dub-video.mp4").write_bytes(base64.b64decode(media["video"]))
    (folder / "dub-second.wav").write_bytes(base64.b64decode(media["second"]))
    job_input = {"video_url": f"{base}/dub-video.mp4", "audio_file": media["first"],
                 "audio_url_2": f"{base}/dub-second.wav", "output_type": "base64"}
    result = worker(backend, ALLOW_PRIVATE_URLS="1").handle({"id": "by-url", "input": job_input})
    assert (result.get("width"), result.get("height"), result.get("num_frames")) == (WIDTH, HEIGHT, 25), result
    capped = worker(backend, ALLOW_PRIVATE_URLS="1", MAX_VIDEO_BYTES="1024").handle(
        {"id": "capped", "input": job_input})
    # MAX_VIDEO_BYTES, not MAX_INPUT_BYTES, caps the download
    assert capped["error"].startswith("TOO_LARGE: video_url is larger than "), capped
