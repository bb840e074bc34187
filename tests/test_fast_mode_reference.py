"""The fast mode against Live Avatar's causal model and streaming pipeline (LIVEAVATAR_REFERENCE_REPO).

Both sides run the same tiny random weights in float32 on one CPU thread, with the same draws of
the reference image's rope distance (the reference takes them from Python's `random` in every
pass; tests/liveavatar_reference.py fixes them). The reference runs with its own configuration,
read from the checkout (tests/liveavatar_reference.py, `reference_fast_settings`), never with
ours. Compared: every constant the fast mode shares with it, the speech features of every block
(the reference's wav2vec2 extraction and `get_audio_embed_bucket_fps` buckets on the same tiny
wav2vec2), the transformer's prediction for every block and step with the caches (wrapping
around the cache, past the frame where the reference image starts to travel), the sampler's
schedule and step, and a whole multi-clip generation from a speech file in float pixels.
Deliberate bugs (a frame off in the rope, one cache for all steps, our old 16 fps, a frame's
speech window one column late) show that the comparisons can fail.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from model.wan_common.vae import WanVideoVAE
from model.wan_s2v import config, fast_pipeline, lora, speech
from model.wan_s2v._transformer_causal import BlockPosition, BlockRing
from model.wan_s2v.fast_pipeline import FastSampler, FastSpeech, euler_schedule, euler_step
from model.wan_s2v.pipeline import WanS2VPipeline
from model.wan_s2v.speech import SpeechEncoder
from tests.liveavatar_reference import (
    FRAMES_PER_BLOCK,
    LIVEAVATAR_TEST_MARKS,
    MOTION_FRAMES,
    NUM_WAV2VEC_LAYERS,
    ReferenceFastSettings,
    fixed_ref_rope_offsets,
    new_reference_caches,
    reference_block,
    reference_block_speech,
    reference_causal_model,
    reference_fast_settings,
    reference_generate,
    reference_pipeline,
    reference_prefill,
    reference_scheduler,
    sharpen_attention,
    write_reference_wav2vec2,
)
from tests.test_wan_pipeline import FAST_VAE
from tests.wan_tiny_models import (
    TINY_OFFICIAL_TRANSFORMER_CONFIG,
    speech_samples,
    tiny_transformer_from_official_config,
    well_conditioned_vae,
)

pytestmark = LIVEAVATAR_TEST_MARKS

LATENT_SIZE = 8  # frame packing needs latent sides divisible by 8
TOKENS_PER_FRAME = (LATENT_SIZE // 2) ** 2
STEPS = 4
CACHE_FRAMES = 2 * FRAMES_PER_BLOCK
# Up to latent frame 36: the cache wraps five times and the reference image moves past frame 30.
BLOCKS = 12
AUDIO_DIM = TINY_OFFICIAL_TRANSFORMER_CONFIG["audio_dim"]
TEXT_DIM = 4096
# max |ours - reference| over max |reference|, the parity bar of the whole project
BAR = 1e-4


@pytest.fixture(autouse=True)
def _pinned_threads(one_cpu_thread):
    pass


@pytest.fixture(scope="module")
def models():
    ours = sharpen_attention(tiny_transformer_from_official_config(seed=0))
    return ours, reference_causal_model(ours)


def _block_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "noise": randn(1, 16, BLOCKS * FRAMES_PER_BLOCK, LATENT_SIZE, LATENT_SIZE),
        "context": randn(1, 7, TEXT_DIM),
        "audio": randn(1, NUM_WAV2VEC_LAYERS, AUDIO_DIM, 4 * BLOCKS * FRAMES_PER_BLOCK),
        "ref_latents": randn(1, 16, 1, LATENT_SIZE, LATENT_SIZE),
        "motion_latents": randn(1, 16, MOTION_FRAMES[1], LATENT_SIZE, LATENT_SIZE),
    }


def _distances(count: int, seed: int = 0) -> list[int]:
    return [int(value) for value in np.random.default_rng(seed).integers(4, 31, size=count)]


def _worst_block_error(models, our_distances=None, shared_ring: bool = False) -> float:
    """Run every block and step on both sides from the same inputs; the largest relative error.

    Both sides get the reference's latents at every step, so each prediction is compared on
    equal inputs. `our_distances` and `shared_ring` inject bugs into our side.
    """
    ours, reference = models
    inputs = _block_inputs()
    distances = _distances(BLOCKS * STEPS)
    our_distances = distances if our_distances is None else our_distances
    caches = new_reference_caches(reference, STEPS, CACHE_FRAMES, TOKENS_PER_FRAME)
    condition_inputs = (inputs["context"], inputs["ref_latents"], inputs["motion_latents"])
    reference_prefill(reference, caches, *condition_inputs)
    condition = ours.prefill_condition(*condition_inputs)
    config = ours.config
    rings = [
        BlockRing.allocate(config.num_layers, 1, CACHE_FRAMES, TOKENS_PER_FRAME, config.num_attention_heads,
                           config.attention_head_dim, torch.float32, torch.device("cpu"))
        for _ in range(1 if shared_ring else STEPS)
    ]
    sigmas, timesteps = euler_schedule(STEPS, torch.device("cpu"))
    worst = 0.0
    passes = iter(our_distances)
    with torch.no_grad(), fixed_ref_rope_offsets(distances):
        for block in range(BLOCKS):
            frames = slice(block * FRAMES_PER_BLOCK, (block + 1) * FRAMES_PER_BLOCK)
            latents = inputs["noise"][:, :, frames]
            audio = inputs["audio"][..., 4 * frames.start : 4 * frames.stop]
            position = BlockPosition(frames.start, FRAMES_PER_BLOCK)
            for step, t in enumerate(timesteps):
                expected = reference_block(
                    reference, caches[step], latents, t, inputs["context"], audio,
                    inputs["ref_latents"], inputs["motion_latents"], frames.start * TOKENS_PER_FRAME,
                )
                got = ours.forward_block(
                    latents, t.expand(1), inputs["context"], audio, rings[0 if shared_ring else step], condition,
                    position, next(passes), motion_frames=MOTION_FRAMES,
                )
                worst = max(worst, ((got - expected).abs().max() / expected.abs().max()).item())
                latents = euler_step(latents, expected, sigmas[step], sigmas[step + 1])
    return worst


def test_every_block_and_step_predicts_what_the_reference_predicts(models):
    assert _worst_block_error(models) <= BAR


def test_a_reference_image_one_frame_off_is_caught(models):
    off_by_one = [min(30, distance + 1) if distance < 30 else 29 for distance in _distances(BLOCKS * STEPS)]
    assert _worst_block_error(models, our_distances=off_by_one) > 10 * BAR


def test_one_cache_for_all_steps_is_caught(models):
    assert _worst_block_error(models, shared_ring=True) > 10 * BAR


def test_the_schedule_and_the_euler_step_are_the_references():
    scheduler = reference_scheduler(STEPS)
    sigmas, timesteps = euler_schedule(STEPS, torch.device("cpu"))
    assert torch.equal(timesteps, scheduler.timesteps)
    assert torch.equal(sigmas, scheduler.sigmas)
    generator = torch.Generator().manual_seed(3)
    sample, velocity = torch.randn(2, 1, 16, 3, 8, 8, generator=generator)
    for step, t in enumerate(timesteps):
        scheduler._step_index = step
        expected = scheduler.step(velocity, t, sample, return_dict=False)[0]
        assert torch.equal(euler_step(sample, velocity, sigmas[step], sigmas[step + 1]), expected)


# --- the reference, made by its own code from its own configuration ---------------------------

HEIGHT = WIDTH = 8 * LATENT_SIZE
# 4 s of speech: 100 frames at the reference's 25 fps, three clips of 48, the last cut short
SPEECH_SECONDS = 4.0
SEED = 11


class _NoModel(torch.nn.Module):
    """What both pipelines move around as the text encoder's model: nothing, on the CPU."""

    device = torch.device("cpu")


class _Prompt:
    """A fixed text embedding, ours as TextEncoder.encode, the reference's as its T5EncoderModel."""

    def __init__(self) -> None:
        self.embedding = torch.randn(1, 7, TEXT_DIM, generator=torch.Generator().manual_seed(6))
        self.model = _NoModel()

    def encode(self, prompts):
        return self.embedding

    def __call__(self, prompts, device):
        return list(self.embedding)


class _ReferenceVAE:
    """Our VAE with the interface of the reference's Wan2_1_VAE (lists of per-video tensors)."""

    def __init__(self, vae: WanVideoVAE) -> None:
        self.vae, self.model, self.dtype, self.device = vae, vae.model, torch.float32, torch.device("cpu")

    def encode(self, videos):
        return [self.vae.encode(video[None])[0] for video in videos]

    def decode(self, latents):
        return [self.vae.decode(latent[None])[0] for latent in latents]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A checkpoint folder holding only the tiny wav2vec2, where both sides read it."""
    folder = tmp_path_factory.mktemp("Wan2.2-S2V-14B")
    write_reference_wav2vec2(folder, AUDIO_DIM)
    return folder


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    soundfile.write(path, speech_samples(SPEECH_SECONDS, seed=4), 16000, subtype="FLOAT")  # read back exactly
    return path


@pytest.fixture(scope="module")
def vae() -> WanVideoVAE:
    return WanVideoVAE(well_conditioned_vae(FAST_VAE))


@pytest.fixture(scope="module")
def pipeline(models, vae, checkpoint_dir):
    """Live Avatar's WanS2V, made by its own __init__ (tests/liveavatar_reference.py)."""
    return reference_pipeline(models[1], text_encoder=_Prompt(), vae=_ReferenceVAE(vae), checkpoint_dir=checkpoint_dir)


@pytest.fixture(scope="module")
def settings(pipeline) -> ReferenceFastSettings:
    return reference_fast_settings(pipeline)


@pytest.fixture(scope="module")
def sampler(models, vae, checkpoint_dir) -> FastSampler:
    """Our fast mode over the same tiny models, its speech encoder on the same wav2vec2 folder."""
    encoder = SpeechEncoder.from_pretrained(checkpoint_dir / config.WAV2VEC_DIR, "cpu", torch.float32)
    components = types.SimpleNamespace(transformer=models[0], vae=vae, text_encoder=_Prompt(), speech_encoder=encoder)
    return FastSampler(WanS2VPipeline(components, torch.device("cpu"), torch.float32))


def _constant_mismatches(reference: ReferenceFastSettings) -> list[str]:
    """Every constant of our fast mode that differs from the reference's, as 'name: ours != theirs'."""
    sigmas, timesteps = euler_schedule(reference.sampling_steps, torch.device("cpu"))
    scheduler = reference_scheduler(reference.sampling_steps)
    ours_and_theirs = {
        "fps": (config.FAST_FPS, reference.fps),
        "latent frames per block": (config.FAST_LATENT_FRAMES_PER_BLOCK, reference.latent_frames_per_block),
        "frames per clip": (config.FAST_FRAMES_PER_CLIP, reference.clip_frames),
        "motion frames": (config.MOTION_FRAMES, reference.motion_frames),
        # our features take one column per frame: no neighbours either side
        "audio window": (0, reference.audio_window),
        "speech feature rate": (config.SPEECH_FEATURE_RATE, reference.speech_feature_rate),
        "steps": (config.FAST_SAMPLE_STEPS, reference.sampling_steps),
        "shift": (config.FAST_SAMPLE_SHIFT, reference.shift),
        "training timesteps": (config.NUM_TRAIN_TIMESTEPS, reference.num_train_timesteps),
        "timesteps": (timesteps.tolist(), scheduler.timesteps.tolist()),
        "sigmas": (sigmas.tolist(), scheduler.sigmas.tolist()),
        "guidance": (0.0, reference.guide_scale),  # the fast mode has no CFG
        "max area": (config.FAST_MAX_AREA, reference.max_area),
        "LoRA alpha": (config.LORA_ALPHA, reference.lora_alpha),
        "LoRA rank": (lora.LORA_RANK, reference.lora_rank),  # the scale is alpha / rank
        "reference image distance": (config.FAST_REFERENCE_DISTANCE, reference.ref_rope_offsets),
    }
    return [f"{name}: {ours!r} != {theirs!r}" for name, (ours, theirs) in ours_and_theirs.items() if ours != theirs]


def _worst_speech_error(sampler: FastSampler, pipeline, settings: ReferenceFastSettings, speech_wav: Path) -> float:
    """Our speech features of every block against the reference's (its clips beyond the speech
    are zeros on both sides), relative to their largest value; inf when the counts disagree."""
    samples, _ = soundfile.read(speech_wav, dtype="float32")
    ours = FastSpeech.encode(sampler.pipeline.speech_encoder, samples)
    theirs = reference_block_speech(pipeline, str(speech_wav), settings.clip_frames)
    if ours.num_frames != round(SPEECH_SECONDS * settings.fps) or ours.num_blocks > len(theirs):
        return float("inf")
    scale = max(block.abs().max() for block in theirs)
    return max(((ours.block(index) - theirs[index]).abs().max() / scale).item() for index in range(ours.num_blocks))


def test_our_fast_mode_constants_are_the_references(settings):
    assert settings.fps == 25  # Live Avatar's own rate, read from its config: not the quality mode's 16
    assert _constant_mismatches(settings) == []


def test_every_blocks_speech_features_are_the_references(sampler, pipeline, settings, speech_wav):
    assert _worst_speech_error(sampler, pipeline, settings, speech_wav) <= BAR


_SOURCE_COLUMNS = speech._source_columns


def _one_column_late(resampled_len: int, fps: int) -> np.ndarray:
    """A bug: each frame's speech taken one 30 fps column after the reference's."""
    return np.minimum(_SOURCE_COLUMNS(resampled_len, fps) + 1, resampled_len - 1)


@pytest.mark.parametrize("bug", ["the quality mode's 16 fps", "a speech window one column late"])
def test_a_deliberate_bug_in_our_speech_timing_is_caught(sampler, pipeline, settings, speech_wav, monkeypatch, bug):
    if bug.endswith("16 fps"):
        monkeypatch.setattr(config, "FAST_FPS", 16)
        monkeypatch.setattr(fast_pipeline, "FAST_FPS", 16)
        assert _constant_mismatches(settings) == ["fps: 16 != 25"]
    else:
        monkeypatch.setattr(speech, "_source_columns", _one_column_late)
    assert _worst_speech_error(sampler, pipeline, settings, speech_wav) > 10 * BAR


def test_a_whole_generation_makes_the_references_frames(models, sampler, pipeline, settings, speech_wav, tmp_path):
    image = np.random.default_rng(5).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    image_path = tmp_path / "portrait.png"
    Image.fromarray(image).save(image_path)
    distances = _distances(3 * 4 * settings.sampling_steps, seed=2)

    with torch.no_grad(), fixed_ref_rope_offsets(distances):
        expected = reference_generate(
            pipeline, ref_image_path=image_path, audio_path=str(speech_wav), prompt="a person speaking",
            size=(HEIGHT, WIDTH), seed=SEED,
        )

    portrait = sampler.encode_portrait(image, HEIGHT, WIDTH)
    samples, _ = soundfile.read(speech_wav, dtype="float32")
    blocks = list(sampler.generate_pixels(
        portrait, samples, SEED, "a person speaking", config.FAST_SAMPLE_STEPS, lambda *_: None,
        reference_distances=iter(distances),
    ))
    ours = torch.cat(blocks, dim=2)[0]

    num_frames = round(SPEECH_SECONDS * settings.fps)  # 100 at the reference's rate
    assert [block.shape[2] for block in blocks] == [9] + [12] * 7 + [7]
    assert ours.shape == (3, num_frames, HEIGHT, WIDTH)
    assert expected.shape[1] == 3 * settings.clip_frames - 3  # the reference generates whole clips
    difference = (ours - expected[:, :num_frames]).abs().max() / expected.abs().max()
    assert difference <= BAR, difference
