"""The fast mode against Live Avatar's causal model and streaming pipeline (LIVEAVATAR_REFERENCE_REPO).

Both sides run the same tiny random weights in float32 on one CPU thread, with the same draws of
the reference image's rope distance (the reference takes them from Python's `random` in every
pass; tests/liveavatar_reference.py fixes them). Compared: the transformer's prediction for every
block and step with the caches (wrapping around the cache, past the frame where the reference
image starts to travel), the sampler's schedule and step, and a whole multi-clip generation in
float pixels. Two deliberate bugs show that the block comparison can fail.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image

from model.wan_common.vae import WanVideoVAE
from model.wan_s2v._transformer_causal import BlockPosition, BlockRing
from model.wan_s2v.fast_pipeline import FastSampler, euler_schedule, euler_step
from model.wan_s2v.pipeline import WanS2VPipeline
from tests.liveavatar_reference import (
    FRAMES_PER_BLOCK,
    LIVEAVATAR_TEST_MARKS,
    MOTION_FRAMES,
    NUM_WAV2VEC_LAYERS,
    fixed_ref_rope_offsets,
    new_reference_caches,
    reference_block,
    reference_causal_model,
    reference_generate,
    reference_prefill,
    reference_scheduler,
    sharpen_attention,
)
from tests.test_wan_pipeline import FAST_VAE
from tests.wan_tiny_models import (
    TINY_OFFICIAL_TRANSFORMER_CONFIG,
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


# --- the whole generation --------------------------------------------------------------------

HEIGHT = WIDTH = 8 * LATENT_SIZE
NUM_FRAMES = 100  # three clips of 48 frames, the last one cut short by the end of the speech
SPEECH_SECONDS = NUM_FRAMES / 16
SEED = 11


class _Features:
    """One speech's wav2vec2 features, served to both loops (the speech encoder is compared on
    its own in the quality mode's tests): ours as `SpeechEncoder.encode`, the reference's as its
    AudioEncoder's bucketing."""

    def __init__(self, frames: int) -> None:
        generator = torch.Generator().manual_seed(5)
        self.features = torch.randn(NUM_WAV2VEC_LAYERS, AUDIO_DIM, frames, generator=generator)
        self.model = torch.nn.Identity()

    def encode(self, samples, fps):
        return self.features

    def extract_audio_feat(self, path, return_all_layers):
        return None

    def get_audio_embed_bucket_fps(self, z, fps, batch_frames, m):
        clips = self.features.shape[-1] // batch_frames + 1
        padded = torch.nn.functional.pad(self.features, (0, clips * batch_frames - self.features.shape[-1]))
        return padded.permute(2, 0, 1), clips


class _Prompt:
    """A fixed text embedding, ours as TextEncoder.encode, the reference's as its T5EncoderModel."""

    def __init__(self) -> None:
        self.embedding = torch.randn(1, 7, TEXT_DIM, generator=torch.Generator().manual_seed(6))
        self.model = types.SimpleNamespace(device=torch.device("cpu"))

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


def test_a_whole_generation_makes_the_references_frames(models, tmp_path):
    transformer, reference = models
    vae = WanVideoVAE(well_conditioned_vae(FAST_VAE))
    speech, prompt = _Features(NUM_FRAMES), _Prompt()
    image = np.random.default_rng(5).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    image_path = tmp_path / "portrait.png"
    Image.fromarray(image).save(image_path)
    distances = _distances(3 * 4 * STEPS, seed=2)

    with torch.no_grad(), fixed_ref_rope_offsets(distances):
        expected = reference_generate(
            reference, text_encoder=prompt, vae=_ReferenceVAE(vae), audio_encoder=speech,
            ref_image_path=image_path, audio_path="speech.wav", prompt="a person speaking",
            size=(HEIGHT, WIDTH), infer_frames=48, sampling_steps=STEPS, num_clips=3, seed=SEED,
        )

    components = types.SimpleNamespace(transformer=transformer, vae=vae, text_encoder=prompt, speech_encoder=speech)
    sampler = FastSampler(WanS2VPipeline(components, torch.device("cpu"), torch.float32))
    portrait = sampler.encode_portrait(image, HEIGHT, WIDTH)
    speech_16k = np.zeros(int(SPEECH_SECONDS * 16000), dtype=np.float32)
    blocks = list(sampler.generate_pixels(
        portrait, speech_16k, SEED, "a person speaking", STEPS, lambda *_: None, reference_distances=iter(distances),
    ))
    ours = torch.cat(blocks, dim=2)[0]

    assert [block.shape[2] for block in blocks] == [9] + [12] * 7 + [7]
    assert ours.shape == (3, NUM_FRAMES, HEIGHT, WIDTH)
    assert expected.shape[1] == 3 * 48 - 3  # the reference generates whole clips
    difference = (ours - expected[:, :NUM_FRAMES]).abs().max() / expected.abs().max()
    assert difference <= BAR, difference
