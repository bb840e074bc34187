"""MODEL_BACKEND=wan-s2v end to end: the worker's start-up and job code (start_worker and
Worker.handle, which the RunPod handler calls), a tiny random-weight checkpoint written in the
official file layout, real jobs, and the MP4s decoded and measured. In this process: a worker
process cost five CPU-seconds more to import torch and load the checkpoint again, and the process
itself is what the lite job tests start (tests/conftest.py, WorkerProcess)."""

from __future__ import annotations

import base64
import dataclasses
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
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from handler.job import Worker
from handler.startup import start_worker
from model.wan_common.text import TextEncoder
from model.wan_common.vae import WanVideoVAE
from model.wan_s2v.config import LORA_FILE
from tests.conftest import ASSETS
from tests.mp4_facts import mp4_facts, read_frames
from tests.wan_tiny_models import (
    TINY_OFFICIAL_TRANSFORMER_CONFIG,
    TINY_T5,
    official_t5_state_dict,
    official_transformer_state_dict,
    official_vae_state_dict,
    speech_samples,
    tiny_live_avatar_lora,
    tiny_umt5,
    tiny_vae,
    write_official_checkpoint,
    write_tiny_live_avatar_lora,
)

pytestmark = pytest.mark.slow

TRANSFORMER_CONFIG = dict(
    TINY_OFFICIAL_TRANSFORMER_CONFIG, dim=24, num_heads=2, num_layers=2, ffn_dim=32, freq_dim=16,
    text_len=16, audio_dim=32, num_audio_token=2, audio_inject_layers=[0, 1],
)
# The official model always takes 4096-wide text embeddings (config.json cannot change it).
T5_CONFIG = dict(TINY_T5, d_model=4096)
LATENT_CHANNELS = TRANSFORMER_CONFIG["in_dim"]
# Two channels and no residual blocks between the up- and downsamplings: the VAE is most of the
# jobs' work (the fast mode encodes and decodes every block), and this one costs a third of one
# with four channels and a residual block per level, for the same frame counts and layout.
VAE_CONFIG = dict(
    base_dim=2, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=0,
    latents_mean=[0.1 * i for i in range(LATENT_CHANNELS)], latents_std=[1.0 + 0.1 * i for i in range(LATENT_CHANNELS)],
)
SPEECH_SECONDS = 5.0  # 80 frames at 16 fps: just more than the first clip's 77 (and 125 at 25 fps)
PORTRAIT_SIDE = 64  # a portrait this small is never scaled: the video is 64x64 at any resolution

# The official files carry no config for the VAE and umt5 (the worker assumes the 14B ones); the
# worker is told the tiny ones (and the text length) by these patches, as a worker process would
# be by this sitecustomize module.
SITECUSTOMIZE = textwrap.dedent("""
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


def tiny_transformer():
    from model.wan_s2v.convert_transformer import convert_transformer_config
    from model.wan_s2v.transformer import WanS2VTransformer3DModel

    torch.manual_seed(0)
    model = WanS2VTransformer3DModel(**convert_transformer_config(TRANSFORMER_CONFIG)).eval()
    with torch.no_grad():  # some official layers start at zero; make every weight matter
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def write_wav2vec2_with_25_layers(folder: Path) -> None:
    """The transformer mixes exactly 25 wav2vec2 hidden states (24 layers + the embedding)."""
    torch.manual_seed(1)
    config = Wav2Vec2Config(
        vocab_size=8, hidden_size=TRANSFORMER_CONFIG["audio_dim"], num_hidden_layers=24, num_attention_heads=2,
        intermediate_size=16, conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
        do_stable_layer_norm=True, conv_bias=True, pad_token_id=0,
    )
    Wav2Vec2ForCTC(config).eval().save_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = write_official_checkpoint(
        tmp_path_factory.mktemp("Wan2.2-S2V-14B"),
        official_transformer_state_dict(tiny_transformer()),
        TRANSFORMER_CONFIG,
        official_vae_state_dict(tiny_vae(config=VAE_CONFIG)),
        official_t5_state_dict(tiny_umt5(config=T5_CONFIG)),
        shard_bytes=100_000,
        wav2vec_hidden_size=TRANSFORMER_CONFIG["audio_dim"],
    )
    write_wav2vec2_with_25_layers(folder / "wav2vec2-large-xlsr-53-english")
    # the published file's spelling and Live Avatar's rank 128 (the worker checks both)
    write_tiny_live_avatar_lora(folder / LORA_FILE, official_transformer_state_dict(tiny_transformer()))
    return folder


def small_portrait_jpeg() -> bytes:
    image = Image.open(ASSETS / "portrait.jpg").convert("RGB").resize((PORTRAIT_SIDE, PORTRAIT_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def patch_tiny_models(patch: pytest.MonkeyPatch, home: Path) -> None:
    """SITECUSTOMIZE's tiny configs patched in (`patch` puts the originals back), downloads offline."""
    for cls in (WanVideoVAE, TextEncoder):
        patch.setattr(cls, "from_official", cls.__dict__["from_official"])
    exec(SITECUSTOMIZE.format(vae=VAE_CONFIG, t5=T5_CONFIG, text_len=TRANSFORMER_CONFIG["text_len"]), {})
    patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a download sends nothing
    patch.setenv("HOME", str(home))


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclasses.dataclass
class LoadedWorker:
    worker: Worker
    log_lines: LogLines

    def run(self, job_input: dict) -> dict:
        return self.worker.handle({"id": f"job-{len(self.log_lines.lines)}", "input": job_input})

    def log(self) -> str:
        return "\n".join(self.log_lines.lines)


@pytest.fixture(scope="module")
def worker(checkpoint, tmp_path_factory):
    """The worker with MODEL_BACKEND=wan-s2v and one preset, "anna", on one torch thread (the tiny
    models' ops are too small to share), its INFO log kept."""
    workdir = tmp_path_factory.mktemp("wan-worker")
    presets = workdir / "presets" / "anna"
    presets.mkdir(parents=True)
    (presets / "portrait.jpg").write_bytes(small_portrait_jpeg())
    lines, root, threads = LogLines(), logging.getLogger(), torch.get_num_threads()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch_tiny_models(patch, workdir)
            loaded = start_worker({"MODEL_BACKEND": "wan-s2v", "MODEL_DIR": str(checkpoint),
                                   "PRESET_AVATARS_DIR": str(workdir / "presets")})
        yield LoadedWorker(loaded, lines)
    finally:
        root.removeHandler(lines)
        root.setLevel(level)
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    soundfile.write(path, speech_samples(SPEECH_SECONDS, seed=4), 16000)
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def short_speech_wav(tmp_path_factory) -> str:
    """One second: one clip."""
    path = tmp_path_factory.mktemp("short-speech") / "short.wav"
    soundfile.write(path, speech_samples(1.0, seed=4), 16000)
    return base64.b64encode(path.read_bytes()).decode()


def job(speech_wav: str, seed: int, **image) -> dict:
    image = image or {"image_file": base64.b64encode(small_portrait_jpeg()).decode()}
    return {"audio_file": speech_wav, **image, "seed": seed, "num_inference_steps": 2, "resolution": "64*64"}


def video_of(output: dict, tmp_path: Path, name: str) -> tuple[Path, dict]:
    assert "error" not in output, output  # the worker's log has the traceback
    assert output.get("success") is True, output
    path = tmp_path / f"{name}.mp4"
    path.write_bytes(base64.b64decode(output["video_base64"]))
    return path, output


def portrait_encodings(log: str, mode: str = "quality") -> int:
    return len(re.findall(rf"portrait encoded for mode {mode}", log))


def test_worker_is_ready_with_the_model_loaded_and_presets_prepared(worker):
    log = worker.log()
    ready = re.search(r"worker ready in ([\d.]+) s", log)
    assert ready, log
    assert "Wan2.2-S2V-14B weights found in" in log and "Wan2.2-S2V ready on cpu" in log
    assert portrait_encodings(log) == 1  # the preset, at start
    print(f"\nstart to ready (tiny checkpoint, CPU): {ready.group(1)} s of loading")


@pytest.fixture(scope="module")
def seed_5_video(worker, speech_wav, tmp_path_factory) -> tuple[Path, dict]:
    """One quality job with seed 5 and an uploaded portrait, which the other jobs are compared with."""
    return video_of(worker.run(job(speech_wav, seed=5)), tmp_path_factory.mktemp("seed-5"), "seed-5")


def frames_of(video: tuple[Path, dict]) -> np.ndarray:
    return read_frames(video[0], 64, 64).astype(int)


def test_a_job_longer_than_one_clip_has_exactly_the_speech_length(seed_5_video):
    path, output = seed_5_video
    facts = mp4_facts(path)
    expected_frames = round(SPEECH_SECONDS * 16)
    assert (facts.num_frames, facts.fps, facts.width, facts.height) == (expected_frames, 16.0, 64, 64)
    assert output["num_frames"] == expected_frames and output["model"] == "wan2.2-s2v-14b" and output["seed"] == 5
    assert abs(facts.audio_seconds - SPEECH_SECONDS) <= 0.05
    assert read_frames(path, 64, 64).std() > 2.0


def test_a_preset_prepared_once_gives_the_same_video_with_the_same_seed_and_another_seed_another(
    worker, speech_wav, short_speech_wav, seed_5_video, tmp_path
):
    first = frames_of(seed_5_video)
    encodings_before = portrait_encodings(worker.log())
    # presets are prepared at start for the default resolution, which this job keeps
    preset_job = {key: value for key, value in job(speech_wav, seed=5, avatar_id="anna").items() if key != "resolution"}
    preset = frames_of(video_of(worker.run(preset_job), tmp_path, "preset"))
    assert portrait_encodings(worker.log()) == encodings_before  # prepared at start, not per job
    # A later job, from the same portrait bytes by another route, repeats seed 5's video exactly:
    # generation is deterministic across jobs, and the preset's preparation matches an upload's.
    assert np.array_equal(preset, first)
    # one clip of speech is enough to tell the seeds apart (the first clip's frames)
    other = frames_of(video_of(worker.run(job(short_speech_wav, seed=6)), tmp_path, "seed-6"))
    assert len(other) == 16
    assert np.abs(first[: len(other)] - other).mean() > 1.0


def test_fast_mode_on_the_same_worker_gives_the_speech_length_block_by_block(
    worker, speech_wav, seed_5_video, tmp_path
):
    reply = worker.run({**job(speech_wav, seed=5), "mode": "fast"})
    path, output = video_of(reply, tmp_path, "fast")
    facts = mp4_facts(path)
    expected_frames = round(SPEECH_SECONDS * 25)  # Live Avatar's rate, not the quality mode's 16
    assert (facts.num_frames, facts.fps, facts.width, facts.height) == (expected_frames, 25.0, 64, 64)
    assert output["mode"] == "fast" and output["num_frames"] == expected_frames
    assert (output["fps"], output["duration_seconds"]) == (25.0, round(expected_frames / 25, 3))
    assert abs(facts.audio_seconds - SPEECH_SECONDS) <= 0.05
    fast = read_frames(path, 64, 64).astype(int)
    assert fast.std() > 2.0
    log = worker.log()
    assert re.search(r"LoRA .*liveavatar\.safetensors", log), log
    assert portrait_encodings(log, "fast") == 1
    quality = frames_of(seed_5_video)  # 16 fps: fewer frames for the same speech
    assert len(quality) < len(fast)
    assert np.abs(fast[: len(quality)] - quality).mean() > 1.0  # the LoRA and the sampler made another video


def test_fast_mode_refuses_guidance_before_any_work(worker, speech_wav):
    reply = worker.run({**job(speech_wav, seed=5), "mode": "fast", "guidance_scale": 4.5})
    assert reply["error"].startswith("INVALID_INPUT: guidance_scale has no meaning in mode 'fast'")


@pytest.fixture
def in_process(monkeypatch, tmp_path, one_cpu_thread):
    """`start_worker` in this process, for the tiny checkpoint: the same start-up and job code as the
    worker process's, without another interpreter importing torch and loading the checkpoint. The
    tiny configs are patched in as SITECUSTOMIZE does there; monkeypatch puts the originals back."""
    patch_tiny_models(monkeypatch, tmp_path)

    def start(model_dir: Path):
        return start_worker({"MODEL_BACKEND": "wan-s2v", "MODEL_DIR": str(model_dir)})

    return start


def checkpoint_with_lora(checkpoint: Path, folder: Path, lora: dict[str, torch.Tensor] | bytes | None) -> Path:
    """The checkpoint's files linked into `folder`, with `lora` as its LoRA file (None: none)."""
    folder.mkdir()
    for item in checkpoint.iterdir():
        if item.name != LORA_FILE:
            (folder / item.name).symlink_to(item)
    if isinstance(lora, bytes):
        (folder / LORA_FILE).write_bytes(lora)
    elif lora is not None:
        save_file(lora, str(folder / LORA_FILE))
    return folder


def bad_lora(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Live Avatar's layout but at rank 64, without block 1's self-attention q, with a foreign key."""
    tensors = tiny_live_avatar_lora(official, rank=64)
    tensors = {key: value for key, value in tensors.items() if not key.startswith("blocks.1.self_attn.q.")}
    return {**tensors, "blocks.0.self_attn.qkv.lora_A.default.weight": torch.zeros(64, 24)}


# each: the LoRA file the worker finds, and what its fast jobs' error must say
LORA_CASES = {
    "missing": (None, ["the Live Avatar LoRA of the fast mode was not found (looked at ", f"/models/{LORA_FILE}"]),
    "another rank, a layer missing, a foreign key": (
        bad_lora,
        ["is not the one Live Avatar publishes", "rank 64 where 128 is expected",
         "blocks.1.self_attn.q: no lora_A/lora_B", "blocks.0.self_attn.qkv.lora_A.default.weight",
         f"Replace it with {LORA_FILE} of Quark-Vision/Live-Avatar"],
    ),
    "not a safetensors file": (
        b"<html>429 Too Many Requests</html>",
        ["is not the one Live Avatar publishes", "it is not a readable safetensors file"],
    ),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_a_worker_without_a_good_lora_fails_fast_jobs_saying_why_and_keeps_quality(
    checkpoint, tmp_path, speech_wav, short_speech_wav, in_process, case
):
    make, expected = LORA_CASES[case]
    lora = make(official_transformer_state_dict(tiny_transformer())) if callable(make) else make
    models = checkpoint_with_lora(checkpoint, tmp_path / "models", lora)
    worker = in_process(models)
    assert worker.startup_error is None, worker.startup_error  # the worker serves: quality needs no LoRA

    fast = worker.handle({"id": "fast", "input": {**job(speech_wav, seed=1), "mode": "fast"}})
    assert fast["error"].startswith("MODEL_UNAVAILABLE: the Live Avatar LoRA of the fast mode "), fast
    assert all(part in fast["error"] for part in expected), fast["error"]
    assert str(models / LORA_FILE) in fast["error"]
    # one clip's worth of speech and one step: enough to see that quality jobs still complete
    quality_job = {**job(short_speech_wav, seed=1), "num_inference_steps": 1}
    quality = worker.handle({"id": "quality", "input": quality_job})
    assert "error" not in quality, quality
    assert quality["mode"] == "quality" and quality["num_frames"] == 16


def test_a_worker_without_weights_fails_its_jobs_saying_where_it_looked(
    tmp_path, speech_wav, in_process, monkeypatch, caplog, capfd
):
    empty = tmp_path / "models"
    empty.mkdir()
    # offline (in_process): the download is attempted through huggingface_hub but sends nothing
    monkeypatch.setenv("HF_TOKEN", "hf_neverLogThisToken")
    caplog.set_level(logging.DEBUG)
    worker = in_process(empty)
    reply = worker.handle({"id": "no-weights", "input": job(speech_wav, seed=1)})
    error = reply["error"]
    assert error.startswith("MODEL_UNAVAILABLE: the Wan2.2-S2V-14B weights were not found (looked in ")
    assert str(empty) in error and "/runpod-volume/huggingface-cache/hub/models--Wan-AI--Wan2.2-S2V-14B" in error
    output = capfd.readouterr()
    log = caplog.text + output.out + output.err
    assert "were not found" in log  # the log is the one that saw the failure
    assert "hf_neverLogThisToken" not in error and "hf_neverLogThisToken" not in log
