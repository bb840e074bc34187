"""MODEL_BACKEND=infinitetalk end to end: the worker's start-up and job code (start_worker and
Worker.handle) on tiny random-weight models written in the published layouts (Wan2.1-I2V-14B-480P,
chinese-wav2vec2-base, InfiniteTalk's single/ and multi/, lightx2v's LoRA in ComfyUI's spelling),
real jobs, and the MP4s decoded and measured.

Two speakers and video dubbing run as jobs (their MP4s measured: length, frame size, audio) and,
for what a job cannot show (which weights ran, which video frames were read), at the backend."""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from handler.job import Worker
from handler.startup import start_worker
from model.base import GenerationOptions, SourceVideo, Speech
from model.infinitetalk import loader
from model.infinitetalk.backend import VideoFrames
from model.infinitetalk.declaration import LORA_WEIGHTS
from model.infinitetalk.layout import cover_and_crop
from model.wan_common.frames import to_pixels
from model.wan_common.text import TextEncoder
from model.wan_common.vae import WanVideoVAE
from tests.conftest import ASSETS
from tests.infinitetalk_tiny_models import E2E_CLIP_TOWER, E2E_T5, E2E_VAE, write_published_layouts
from tests.mp4_facts import mp4_facts, read_frames
from tests.wan_tiny_models import speech_samples

pytestmark = pytest.mark.slow

SIDE = 64  # the video is 64x64: `resolution` 64*64 scales the 480 bucket's 640x640 down to it
# the portrait sent: large enough for the face check (a 64x64 one has too small a face to be found)
PORTRAIT_SIDE = 96
LONG_SECONDS = 3.6  # 90 frames at 25 fps: two clips (81 frames, then 9 new of the next 81)
SHORT_SECONDS = 1.0  # 25 frames: one clip


def patch_tiny_models(patch: pytest.MonkeyPatch, home: Path) -> None:
    """The tiny VAE, umT5 and CLIP configs patched in (the official files carry none), downloads offline."""
    vae, text = WanVideoVAE.__dict__["from_official"].__func__, TextEncoder.__dict__["from_official"].__func__
    patch.setattr(WanVideoVAE, "from_official", classmethod(
        lambda cls, path, device="cpu", dtype=torch.float32, vae_config=None: vae(cls, path, device, dtype, E2E_VAE)))
    patch.setattr(TextEncoder, "from_official", classmethod(
        lambda cls, path, tokenizer, device="cpu", dtype=torch.bfloat16, encoder_config=None: text(
            cls, path, tokenizer, device, dtype, E2E_T5)))
    patch.setattr(loader, "IMAGE_TOWER", E2E_CLIP_TOWER)
    patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a download sends nothing
    patch.setenv("HOME", str(home))


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return write_published_layouts(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models' ops are too small to share
    with pytest.MonkeyPatch.context() as patch:
        patch_tiny_models(patch, tmp_path_factory.mktemp("home"))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def worker_and_log(models, patched) -> Iterator[tuple[Worker, LogLines]]:
    lines, root = LogLines(), logging.getLogger()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    try:
        yield start_worker({"MODEL_BACKEND": "infinitetalk", "MODEL_DIR": str(models)}), lines
    finally:
        root.removeHandler(lines)
        root.setLevel(level)


@pytest.fixture(scope="module")
def worker(worker_and_log) -> Worker:
    return worker_and_log[0]


def portrait_image() -> np.ndarray:
    return np.asarray(Image.open(ASSETS / "portrait.jpg").convert("RGB").resize((PORTRAIT_SIDE, PORTRAIT_SIDE)))


def as_conditioned(image: np.ndarray) -> torch.Tensor:
    """A frame as the backend conditions a 64x64 clip on it: covered, centre-cropped, in [-1, 1]."""
    return to_pixels(cover_and_crop(image, (SIDE, SIDE)))


def wav_base64(seconds: float, seed: int = 4) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, speech_samples(seconds, seed=seed), 16000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def job(seconds: float, seed: int = 5, **fields) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(portrait_image()).save(buffer, format="PNG")
    return {"image_file": base64.b64encode(buffer.getvalue()).decode(), "audio_file": wav_base64(seconds),
            "seed": seed, "resolution": f"{SIDE}*{SIDE}", **fields}


def run(worker: Worker, job_input: dict, **handling) -> dict:
    return worker.handle({"id": "job", "input": job_input}, **handling)


def frames_of(output: dict, tmp_path: Path, name: str) -> tuple[np.ndarray, object]:
    assert "error" not in output and output.get("success") is True, output
    path = tmp_path / f"{name}.mp4"
    path.write_bytes(base64.b64decode(output["video_base64"]))
    return read_frames(path, SIDE, SIDE).astype(int), mp4_facts(path)


@pytest.fixture(scope="module")
def quality_video(worker, tmp_path_factory):
    output = run(worker, job(SHORT_SECONDS))  # one clip: the 40 steps of three passes are most of the suite's cost
    return output, *frames_of(output, tmp_path_factory.mktemp("quality"), "quality")


def test_the_worker_loads_every_published_layout_and_the_lora(worker_and_log):
    worker, lines = worker_and_log
    assert worker.startup_error is None, worker.startup_error
    log = "\n".join(lines.lines)
    assert "InfiniteTalk ready on cpu" in log
    assert re.search(r"attached the LoRA .*lightx2v.*: 20 layers at rank 4, alpha 4, 1 tensors replaced", log), log


def test_an_image_job_lasts_as_long_as_the_speech_at_25_fps(quality_video):
    output, frames, facts = quality_video
    expected = round(SHORT_SECONDS * 25)
    assert (facts.num_frames, facts.fps, facts.width, facts.height) == (expected, 25.0, SIDE, SIDE)
    assert output["model"] == "infinitetalk" and output["mode"] == "quality" and output["num_frames"] == expected
    assert abs(facts.audio_seconds - SHORT_SECONDS) <= 0.05
    assert frames.std() > 2.0


def test_a_fast_job_runs_the_lora_and_gives_another_video(worker, quality_video, tmp_path):
    output = run(worker, job(SHORT_SECONDS, mode="fast"))
    frames, facts = frames_of(output, tmp_path, "fast")
    assert (facts.num_frames, facts.fps) == (25, 25.0) and output["mode"] == "fast"
    assert np.abs(frames - quality_video[1][:25]).mean() > 1.0


def test_a_stream_job_over_two_clips_sends_its_first_segment_where_the_first_clip_ends(worker):
    items: list[dict] = []
    output = run(worker, job(LONG_SECONDS, mode="fast", stream=True), emit=items.append)
    assert "error" not in output, output
    segments = [item["segment"] for item in items if "segment" in item]
    assert segments and [segment["index"] for segment in segments] == sorted(segment["index"] for segment in segments)
    # cut where generate's batches end: the first clip's 81 frames, then the rest
    ends = sorted({segment["end_seconds"] for segment in segments})
    assert ends[0] == pytest.approx(81 / 25, abs=0.05) and ends[-1] == pytest.approx(LONG_SECONDS, abs=0.05)
    assert output["num_frames"] == round(LONG_SECONDS * 25) and output["fps"] == 25  # the two clips chained


@pytest.mark.parametrize(("fields", "field", "says"), [
    ({"num_inference_steps": 4}, "num_inference_steps", "is not a field of this endpoint's backend (infinitetalk)"),
    ({"speaker_boxes": "0,0,10,10;20,0,30,10"}, "speaker_boxes", "but this job has one speech"),
    ({"speaker_boxes": "0,0,10,10"}, "speaker_boxes", "but it holds 1 box(es)"),
    ({"speaker_boxes": "0,0,10,10;30,0,20,10"}, "speaker_boxes", "box 2 has x_max <= x_min"),
])
def test_fields_it_cannot_honour_are_refused_naming_them(worker, fields, field, says):
    error = run(worker, job(SHORT_SECONDS, **fields))["error"]
    assert error.startswith(f"INVALID_INPUT: {field}") and says in error, error


def test_a_worker_without_the_lora_fails_fast_jobs_and_keeps_quality(models, patched, tmp_path):
    without = tmp_path / "models"
    without.mkdir()
    for folder in models.iterdir():
        if folder.name != LORA_WEIGHTS.folder:
            (without / folder.name).symlink_to(folder)
    worker = start_worker({"MODEL_BACKEND": "infinitetalk", "MODEL_DIR": str(without)})
    assert worker.startup_error is None, worker.startup_error
    fast = run(worker, job(SHORT_SECONDS, mode="fast"))
    unavailable = "MODEL_UNAVAILABLE: the lightx2v step-distillation LoRA of the fast mode was not found"
    assert fast["error"].startswith(unavailable), fast
    quality = run(worker, job(SHORT_SECONDS))
    assert "error" not in quality and quality["num_frames"] == 25, quality


# --- two speakers and dubbing, at the backend ----------------------------------------------------


def generate(worker: Worker, speech: Speech, mode: str = "fast", fields: dict | None = None, **options) -> np.ndarray:
    backend = worker.loaded_backend
    portrait = backend.prepare_portrait(portrait_image(), SIDE * SIDE)
    own = backend.parse_options(fields or {}, mode)
    batches = backend.generate(
        portrait, speech, GenerationOptions(seed=5, mode=mode, backend_options=own, **options), lambda done, what: None
    )
    return np.concatenate(list(batches)).astype(int)


def test_two_speakers_use_the_multi_weights_and_their_regions(worker):
    first = speech_samples(SHORT_SECONDS, seed=1)
    second = np.zeros_like(first)
    second[len(second) // 2 :] = speech_samples(SHORT_SECONDS, seed=2)[len(second) // 2 :]
    mix = Speech(first + second)
    speakers = (Speech(first), Speech(second))
    alone = generate(worker, Speech(first))
    together = generate(worker, mix, speakers=speakers)
    boxed = generate(worker, mix, speakers=speakers, fields={"speaker_boxes": "0,0,48,96;48,0,96,96"})
    assert together.shape == boxed.shape == alone.shape == (25, SIDE, SIDE, 3)
    assert np.abs(together - alone).mean() > 1.0
    assert np.abs(boxed - together).mean() > 0.1
    # the single-speaker weights are back for the next one-speaker job
    assert np.array_equal(generate(worker, Speech(first)), alone)


class FramesDouble(SourceVideo):
    """A video of `frames` frames at 25 fps: the portrait, then from frame 1 on a colour-shifted one."""

    def __init__(self, frames: int) -> None:
        self.count, self.read = frames, 0
        self.height = self.width = PORTRAIT_SIDE
        self.duration_seconds = frames / 25

    def first_frame(self) -> np.ndarray:
        return portrait_image()

    def frames(self, fps: float) -> Iterator[np.ndarray]:
        assert fps == 25
        shifted = np.roll(portrait_image(), 1, axis=2)
        for index in range(self.count):
            self.read += 1
            yield portrait_image() if index == 0 else shifted


def test_a_video_conditions_each_clip_on_its_frame_where_the_clip_starts(worker):
    speech = Speech(speech_samples(LONG_SECONDS, seed=3))
    image = generate(worker, speech)
    video = FramesDouble(200)
    dubbed = generate(worker, speech, source_video=video)
    assert dubbed.shape == image.shape == (90, SIDE, SIDE, 3)
    # clip 1 starts on frame 0, the portrait itself; clip 2 on frame 72, the shifted frame
    assert np.array_equal(dubbed[:81], image[:81])
    assert np.abs(dubbed[81:] - image[81:]).mean() > 1.0
    assert video.read == 73  # read up to the last clip's start, not the whole video


def test_video_frames_are_read_in_order_and_the_last_is_held_past_the_end():
    first = torch.zeros(3, SIDE, SIDE)
    short = FramesDouble(10)
    frames = VideoFrames(short, SIDE, SIDE, first)
    assert frames.at(0) is not first and torch.equal(frames.at(0), as_conditioned(portrait_image()))
    held = frames.at(72)
    assert short.read == 10 and torch.equal(held, as_conditioned(np.roll(portrait_image(), 1, axis=2)))
    assert frames.at(144) is held
    with pytest.raises(ValueError, match="read in order"):
        frames.at(5)


# --- two speakers and dubbing, through the worker ------------------------------------------------


def video_base64(tmp_path: Path, width: int, height: int, seconds: float, fps: int = 25, face: bool = True) -> str:
    """An H.264 MP4 made by ffmpeg: the portrait (or a grey wall) drifting a pixel a frame."""
    import subprocess

    import imageio_ffmpeg

    source = (["-loop", "1", "-i", str(ASSETS / "portrait.jpg")] if face
              else ["-f", "lavfi", "-i", f"color=c=gray:s={width * 2}x{height * 2}"])
    path = tmp_path / "source.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *source, "-t", str(seconds), "-r", str(fps),
                    "-vf", f"scale={width * 2}:{height * 2},crop={width}:{height}:t:t",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                   check=True, timeout=60)
    return base64.b64encode(path.read_bytes()).decode()


def dubbing_job(video: str, seconds: float, **fields) -> dict:
    return {"video_file": video, "audio_file": wav_base64(seconds), "seed": 5, "resolution": f"{SIDE}*{SIDE}",
            "mode": "fast", **fields}


def test_a_dubbing_job_lasts_as_long_as_the_speech_at_the_videos_frame_size(worker, tmp_path):
    video = video_base64(tmp_path, 96, 80, seconds=2.0)
    output = run(worker, dubbing_job(video, SHORT_SECONDS))
    assert "error" not in output, output
    path = tmp_path / "dubbed.mp4"
    path.write_bytes(base64.b64decode(output["video_base64"]))
    facts = mp4_facts(path)
    assert (facts.width, facts.height, facts.fps, facts.num_frames) == (96, 80, 25.0, 25)
    assert (output["width"], output["height"]) == (96, 80)
    assert abs(facts.audio_seconds - SHORT_SECONDS) <= 0.05  # the speech, not the video's two seconds
    assert read_frames(path, 96, 80).std() > 2.0


def test_a_two_speaker_job_lays_their_speeches_one_after_the_other(worker, tmp_path):
    output = run(worker, job(0.6, mode="fast", audio_file_2=wav_base64(0.6, seed=9), speaker_timing="sequential",
                             speaker_boxes="0,0,48,96;48,0,96,96"))
    frames, facts = frames_of(output, tmp_path, "two")
    assert (facts.num_frames, facts.fps) == (30, 25.0) and output["num_frames"] == 30
    assert abs(facts.audio_seconds - 1.2) <= 0.05
    assert frames.std() > 2.0


def test_dubbing_and_two_speaker_refusals_name_the_field(worker, tmp_path):
    wall = video_base64(tmp_path, 64, 64, seconds=1.0, face=False)
    error = run(worker, dubbing_job(wall, SHORT_SECONDS))["error"]
    assert error.startswith("NO_FACE: video_file: the video's first frame has no face"), error
    # a video past MAX_VIDEO_SECONDS is refused from its header, before a frame is decoded
    long = video_base64(tmp_path, 16, 16, seconds=301, fps=1, face=False)
    error = run(worker, dubbing_job(long, SHORT_SECONDS))["error"]
    assert error.startswith("TOO_LARGE: video_file") and "MAX_VIDEO_SECONDS" in error, error
    second_only = {key: value for key, value in job(0.6, audio_file_2=wav_base64(0.6)).items() if key != "audio_file"}
    error = run(worker, second_only)["error"]
    assert error.startswith("INVALID_INPUT: ") and "audio_file_2" in error and "audio_file" in error, error
