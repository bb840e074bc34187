"""MODEL_BACKEND=omniavatar end to end: `start_worker` and `Worker.handle` (what the RunPod handler
calls) on tiny random-weight checkpoints laid out as published (Wan2.1-T2V-14B / -1.3B,
OmniAvatar-14B / -1.3B, wav2vec2-base-960h), real jobs, the MP4s decoded and measured.

One worker per size, each loaded once for the module; the jobs use a small token budget so that a
chunk is 21 frames at 64x64 and a second of speech takes two overlapping chunks."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import textwrap
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from handler.job import Worker
from handler.runpod_handler import RunPodHandler
from handler.startup import start_worker
from model.omniavatar.declaration import DECLARATION, FRAME_BATCHES
from model.omniavatar.layout import chunk_frames
from model.omniavatar.pipeline import LEADING_FRAMES, ChunkSettings, plan_video
from model.wan_common.text import TextEncoder
from model.wan_common.vae import WanVideoVAE
from tests.conftest import ASSETS
from tests.mp4_facts import mp4_facts, read_frames
from tests.omniavatar_tiny_models import write_tiny_omniavatar_folders
from tests.wan_tiny_models import (
    TINY_T5,
    official_t5_state_dict,
    official_vae_state_dict,
    speech_samples,
    tiny_umt5,
    tiny_vae,
)

LATENT_CHANNELS = 4
VAE_CONFIG = dict(
    base_dim=2, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=0,
    latents_mean=[0.1 * i for i in range(LATENT_CHANNELS)], latents_std=[1.0 + 0.1 * i for i in range(LATENT_CHANNELS)],
)
TEXT_LEN = 16
SIDE = 64
# 84 tokens at 64x64 (16 a latent frame): chunks of 21 video frames; overlap 5 leaves 16 new a chunk
JOB_OPTIONS = {"num_inference_steps": 2, "max_tokens": 84, "overlap_frames": 5, "resolution": f"{SIDE}*{SIDE}"}
SPEECH_SECONDS = 1.0

# The official files carry no config for the VAE and umT5 (the worker assumes the real ones); the
# worker is told the tiny ones by these patches, as in tests/test_wan_backend_job.py.
PATCHES = textwrap.dedent("""
    import torch
    from model.wan_common.text import TextEncoder
    from model.wan_common.vae import WanVideoVAE

    _vae, _text = WanVideoVAE.from_official.__func__, TextEncoder.from_official.__func__
    WanVideoVAE.from_official = classmethod(
        lambda cls, path, device="cpu", dtype=torch.float32, vae_config=None: _vae(cls, path, device, dtype, {vae}))

    def _tiny_text(cls, path, tok, device="cpu", dtype=torch.bfloat16, encoder_config=None):
        encoder = _text(cls, path, tok, device, dtype, {t5})
        encoder.text_len = {text_len}
        return encoder

    TextEncoder.from_official = classmethod(_tiny_text)
""")


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """One MODEL_DIR holding both sizes' folders and the shared wav2vec2."""
    root = tmp_path_factory.mktemp("omniavatar-models")
    vae_state = official_vae_state_dict(tiny_vae(config=VAE_CONFIG))
    t5_state = official_t5_state_dict(tiny_umt5(config=TINY_T5))
    write_tiny_omniavatar_folders(root, "14B", vae_state, t5_state, seed=0)
    write_tiny_omniavatar_folders(root, "1.3B", vae_state, t5_state, seed=1)
    return root


def _start(models: Path, workdir: Path, size: str | None) -> tuple[Worker, LogLines]:
    lines, root = LogLines(), logging.getLogger()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for cls in (WanVideoVAE, TextEncoder):
                patch.setattr(cls, "from_official", cls.__dict__["from_official"])
            exec(PATCHES.format(vae=VAE_CONFIG, t5=TINY_T5, text_len=TEXT_LEN), {})
            patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a download sends nothing
            patch.setenv("HOME", str(workdir))
            env = {"MODEL_BACKEND": "omniavatar", "MODEL_DIR": str(models), "STREAM_RESULTS": "1"}
            if size is not None:
                env["OMNIAVATAR_SIZE"] = size
            worker = start_worker(env)
    finally:
        root.removeHandler(lines)
        root.setLevel(level)
    return worker, lines


@pytest.fixture(scope="module")
def worker(models, tmp_path_factory):
    """The default size (14B) on one torch thread, its INFO log kept."""
    threads = torch.get_num_threads()
    loaded = _start(models, tmp_path_factory.mktemp("worker-14b"), None)
    yield loaded
    torch.set_num_threads(threads)


def portrait_b64() -> str:
    image = Image.open(ASSETS / "portrait.jpg").convert("RGB").resize((SIDE, SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    soundfile.write(path, speech_samples(SPEECH_SECONDS, seed=4), 16000)
    return base64.b64encode(path.read_bytes()).decode()


def job(speech: str, seed: int = 5, **fields) -> dict:
    return {"audio_file": speech, "image_file": portrait_b64(), "seed": seed, **JOB_OPTIONS, **fields}


def handle(worker: Worker, job_input: dict, name: str = "job") -> dict:
    return worker.handle({"id": name, "input": job_input})


@pytest.fixture(scope="module")
def image_job(worker, speech_wav, tmp_path_factory) -> tuple[Path, dict]:
    output = handle(worker[0], job(speech_wav), "image")
    assert output.get("success") is True, output
    path = tmp_path_factory.mktemp("image-job") / "video.mp4"
    path.write_bytes(base64.b64decode(output["video_base64"]))
    return path, output


def test_the_default_size_loads_the_14b_folders(worker):
    loaded, lines = worker
    assert loaded.startup_error is None, loaded.startup_error
    log = lines.text()
    assert re.search(r"Wan2\.1-T2V-14B weights found in .*Wan2\.1-T2V-14B", log), log
    assert "OmniAvatar-14B weights found in" in log and "wav2vec2-base-960h weights found in" in log
    assert "1.3B" not in log
    # the LoRA merged into every target of the 6 blocks (8 attention linears and 2 feed-forward)
    assert re.search(r"OmniAvatar LoRA merged: 60 layers at rank 4", log), log
    assert "OmniAvatar-14B ready on cpu" in log


def test_an_image_job_lasts_exactly_the_speech_at_25_fps_with_its_audio(image_job):
    path, output = image_job
    facts = mp4_facts(path)
    expected = round(SPEECH_SECONDS * 25)
    assert (facts.num_frames, facts.fps, facts.width, facts.height) == (expected, 25.0, SIDE, SIDE)
    assert output["num_frames"] == expected and output["model"] == "omniavatar-14b" and output["seed"] == 5
    assert abs(facts.audio_seconds - SPEECH_SECONDS) <= 0.05
    assert read_frames(path, SIDE, SIDE).std() > 2.0


def test_a_second_of_speech_takes_two_overlapping_chunks():
    """With the jobs' budget: 21-frame chunks; the first yields 21 - 8 leading frames, the second 16 more."""
    settings = ChunkSettings(max_tokens=JOB_OPTIONS["max_tokens"], overlap=JOB_OPTIONS["overlap_frames"])
    plan = plan_video(SIDE, SIDE, int(SPEECH_SECONDS * 16000), settings)
    assert (plan.chunk, plan.chunks, plan.output_frames) == (21, 2, 25)
    assert plan.chunk - LEADING_FRAMES < plan.output_frames <= plan.chunk - LEADING_FRAMES + plan.chunk - plan.overlap


def test_the_declared_frame_batches_are_the_default_sizes_chunks():
    chunk = chunk_frames(720, 720)
    assert FRAME_BATCHES == (chunk - LEADING_FRAMES, chunk - 13)
    assert DECLARATION.default_max_area("quality") == 720 * 720


def test_a_stream_job_sends_segments_that_make_the_whole_video(worker, speech_wav, tmp_path):
    async def consume() -> list[dict]:
        stream_job = {"id": "stream", "input": job(speech_wav, stream=True, output_type="auto")}
        return [item async for item in RunPodHandler(worker[0]).stream(stream_job, {})]

    items = asyncio.run(consume())
    segments = [item["segment"] for item in items if "segment" in item]
    result = items[-1]
    assert result.get("success") is True, result
    expected = round(SPEECH_SECONDS * 25)
    assert segments and result["segments"] == len(segments) and result["num_frames"] == expected
    assert segments[-1]["end_seconds"] == result["duration_seconds"] == SPEECH_SECONDS
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(base64.b64decode(segment["data_base64"]) for segment in segments))
    facts = mp4_facts(joined)
    assert (facts.num_frames, facts.fps, facts.audio_codec) == (expected, 25.0, "aac")


def test_the_1_3b_setting_loads_the_1_3b_folders_and_renders(models, tmp_path, speech_wav):
    loaded, lines = _start(models, tmp_path, "1.3B")
    try:
        log = lines.text()
        assert loaded.startup_error is None, loaded.startup_error
        assert re.search(r"Wan2\.1-T2V-1\.3B weights found in .*Wan2\.1-T2V-1\.3B", log), log
        assert "OmniAvatar-1.3B weights found in" in log and "-14B" not in log
        assert re.search(r"OmniAvatar LoRA merged: 40 layers at rank 4", log), log
        output = handle(loaded, job(speech_wav, num_inference_steps=1), "small")
        assert output.get("success") is True, output
        assert output["model"] == "omniavatar-1.3b" and output["num_frames"] == round(SPEECH_SECONDS * 25)
    finally:
        torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.mark.parametrize(
    ("fields", "field", "sentence"),
    [
        ({"sample_solver": "unipc"}, "sample_solver", "sample_solver is not a field of this endpoint's backend"),
        ({"guidance_scale": 50}, "guidance_scale", "guidance_scale must be a number from 0 to 30, not 50"),
        ({"overlap_frames": 6}, "overlap_frames", "overlap_frames must be 1 + 4n"),
        ({"guidance_scale": 1, "audio_scale": 3}, "audio_scale", "audio_scale has no effect with guidance_scale 1"),
        ({"max_tokens": 64, "overlap_frames": 41}, "overlap_frames",
         "leaves no new frame in chunks of 13 frames at 64x64"),
    ],
)
def test_fields_it_cannot_honour_are_refused_by_name_before_any_work(worker, speech_wav, fields, field, sentence):
    output = handle(worker[0], job(speech_wav, **fields), "refused")
    error = output.get("error", "")
    assert error.startswith("INVALID_INPUT: "), output
    assert field in error and sentence in error, error


def test_the_prompt_steers_the_video(worker, speech_wav, image_job, tmp_path):
    output = handle(worker[0], job(speech_wav, prompt="a woman smiling"), "prompt")
    assert output.get("success") is True, output
    path = tmp_path / "prompt.mp4"
    path.write_bytes(base64.b64decode(output["video_base64"]))
    first = read_frames(image_job[0], SIDE, SIDE).astype(int)
    other = read_frames(path, SIDE, SIDE).astype(int)
    assert first.shape == other.shape and np.abs(first - other).mean() > 0.5


def test_the_size_setting_chooses_the_weights_fetched():
    from model.declaration import SettingValueError
    from model.omniavatar import declaration as declared
    from scripts.download_models import chosen_specs

    small = chosen_specs(["omniavatar"], False, {"OMNIAVATAR_SIZE": "1.3B"})
    assert small == [declared.WAN_T2V_1_3B, declared.OMNIAVATAR_1_3B, declared.WAV2VEC_WEIGHTS]
    assert chosen_specs(["omniavatar"], False, {}) == [
        declared.WAN_T2V_14B, declared.OMNIAVATAR_14B, declared.WAV2VEC_WEIGHTS]
    # the 1.3B transformer is one file, the 14B's six shards with an index
    assert "diffusion_pytorch_model.safetensors" in declared.WAN_T2V_1_3B.required_files
    assert "diffusion_pytorch_model.safetensors.index.json" in declared.WAN_T2V_14B.required_files
    with pytest.raises(SettingValueError, match=r"OMNIAVATAR_SIZE='13B' is not one of 14B, 1\.3B"):
        chosen_specs(["omniavatar"], False, {"OMNIAVATAR_SIZE": "13B"})
