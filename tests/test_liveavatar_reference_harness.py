"""The Live Avatar harness runs the causal reference on tiny weights (needs LIVEAVATAR_REFERENCE_REPO).

Smoke tests only: the harness builds Live Avatar's `CausalWanModel_S2V` with our tiny
transformer's weights, prefills the condition cache and denoises blocks as the streaming
pipeline does, deterministically once the rope offset draws are fixed.
"""

from __future__ import annotations

import pytest
import torch

from tests.liveavatar_reference import (
    FRAMES_PER_BLOCK,
    LIVEAVATAR_TEST_MARKS,
    MOTION_FRAMES,
    NUM_WAV2VEC_LAYERS,
    REF_ROPE_OFFSET_RANGE,
    cond_cache_tokens,
    fixed_ref_rope_offsets,
    latent_frames_per_clip,
    new_reference_caches,
    reference_block,
    reference_causal_model,
    reference_clip,
    reference_fast_settings,
    reference_generate,
    reference_pipeline,
    reference_prefill,
    reference_run_arguments,
    sharpen_attention,
    write_reference_wav2vec2,
)
from tests.wan_tiny_models import TINY_OFFICIAL_TRANSFORMER_CONFIG, tiny_transformer_from_official_config

pytestmark = LIVEAVATAR_TEST_MARKS

LATENT_HEIGHT, LATENT_WIDTH = 8, 8  # frame packing needs multiples of 8
TOKENS_PER_FRAME = LATENT_HEIGHT * LATENT_WIDTH // 4
NUM_STEPS = 4
NUM_BLOCKS = 2
CLIP_FRAMES = NUM_BLOCKS * FRAMES_PER_BLOCK
AUDIO_DIM = TINY_OFFICIAL_TRANSFORMER_CONFIG["audio_dim"]
TEXT_DIM = 4096


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return reference_causal_model(sharpen_attention(tiny_transformer_from_official_config(seed=0)))


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "noise": randn(1, 16, CLIP_FRAMES, LATENT_HEIGHT, LATENT_WIDTH),
        "context": randn(1, 7, TEXT_DIM),
        "audio": randn(1, NUM_WAV2VEC_LAYERS, AUDIO_DIM, 4 * CLIP_FRAMES),
        "ref_latents": randn(1, 16, 1, LATENT_HEIGHT, LATENT_WIDTH),
        "motion_latents": randn(1, 16, MOTION_FRAMES[1], LATENT_HEIGHT, LATENT_WIDTH),
    }


def _run(model: torch.nn.Module, offsets, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    inputs = _inputs(seed)
    caches = new_reference_caches(model, NUM_STEPS, CLIP_FRAMES, TOKENS_PER_FRAME)
    reference_prefill(model, caches, inputs["context"], inputs["ref_latents"], inputs["motion_latents"])
    with fixed_ref_rope_offsets(offsets) as used:
        out = reference_clip(
            model, caches, inputs["noise"], inputs["context"], inputs["audio"],
            inputs["ref_latents"], inputs["motion_latents"],
        )
    return out, list(used)


def test_prefill_fills_the_shared_condition_cache(model) -> None:
    inputs = _inputs()
    caches = new_reference_caches(model, NUM_STEPS, CLIP_FRAMES, TOKENS_PER_FRAME)
    heads, head_dim = model.num_heads, model.dim // model.num_heads
    assert caches[0][0]["k"].shape == (1, CLIP_FRAMES * TOKENS_PER_FRAME, heads, head_dim)
    reference_prefill(model, caches, inputs["context"], inputs["ref_latents"], inputs["motion_latents"])

    cond_tokens = cond_cache_tokens(TOKENS_PER_FRAME)  # ref frame, then the packed motion frames
    for layer in range(model.num_layers):
        assert int(caches[0][layer]["cond_end"]) == cond_tokens
        assert all(cache[layer]["cond_k"] is caches[0][layer]["cond_k"] for cache in caches)
        assert caches[0][layer]["cond_k"].abs().amin(dim=(0, 2, 3)).gt(0).all()
        assert caches[0][layer]["k"].abs().max() == 0  # the prefill writes only the cond cache


def test_two_blocks_of_four_steps(model) -> None:
    out, used = _run(model, offsets=[4] * NUM_STEPS + [30] * NUM_STEPS)
    again, _ = _run(model, offsets=[4] * NUM_STEPS + [30] * NUM_STEPS)

    assert out.shape == (1, 16, CLIP_FRAMES, LATENT_HEIGHT, LATENT_WIDTH)
    assert torch.isfinite(out).all()
    assert out.std() > 0.1
    assert used == [4] * NUM_STEPS + [30] * NUM_STEPS  # one draw per model call
    assert torch.equal(out, again)
    print(f"clip latents: std {out.std():.3g}, max {out.abs().max():.3g}")


def test_the_rope_offset_hook_changes_the_reference_position(model) -> None:
    """Block b's reference rope frame is max(30, 3 * b + offset): block 0 never moves, block 1
    moves for offsets above 27 only."""
    base, _ = _run(model, offsets=4)
    same, _ = _run(model, offsets=27)
    moved, _ = _run(model, offsets=30)
    first, second = slice(0, FRAMES_PER_BLOCK), slice(FRAMES_PER_BLOCK, CLIP_FRAMES)

    assert torch.equal(same, base)
    assert torch.equal(moved[:, :, first], base[:, :, first])
    change = (moved[:, :, second] - base[:, :, second]).abs().max()
    assert change > 1e-3 * base.abs().max(), change


def test_a_block_prediction_depends_on_the_cache(model) -> None:
    """The second block attends to the first block's keys in its step cache."""
    inputs = _inputs()
    caches = new_reference_caches(model, 1, CLIP_FRAMES, TOKENS_PER_FRAME)
    reference_prefill(model, caches, inputs["context"], inputs["ref_latents"], inputs["motion_latents"])
    block = inputs["noise"][:, :, FRAMES_PER_BLOCK:]
    audio = inputs["audio"][..., 4 * FRAMES_PER_BLOCK :]
    start = FRAMES_PER_BLOCK * TOKENS_PER_FRAME
    args = (inputs["context"], audio, inputs["ref_latents"], inputs["motion_latents"], start)
    with fixed_ref_rope_offsets(10):
        empty_history = reference_block(model, caches[0], block, 1000.0, *args)
        caches[0][0]["k"][:, :start] = 1.0
        with_history = reference_block(model, caches[0], block, 1000.0, *args)
    assert empty_history.shape == block.shape
    assert (with_history - empty_history).abs().max() > 1e-4


# --- the pipeline's own loop -----------------------------------------------------------------


class _FakeText:
    def __init__(self) -> None:
        self.model = torch.nn.Identity()
        self.context = torch.randn(7, TEXT_DIM, generator=torch.Generator().manual_seed(11))

    def __call__(self, prompts, device):
        return [self.context.clone() for _ in prompts]


class _FakeVae:
    """Wan2_1_VAE's interface: 4x temporal (first frame alone) and 8x spatial compression."""

    def __init__(self) -> None:
        self.model = torch.nn.Identity()
        self.dtype, self.device = torch.float32, torch.device("cpu")
        generator = torch.Generator().manual_seed(12)
        self.down = torch.randn(16, 3, generator=generator)
        self.up = torch.randn(3, 16, generator=generator) / 4
        self.decoded: list[torch.Tensor] = []

    def encode(self, videos):
        out = []
        for video in videos:  # [3, T, H, W]
            frames = torch.cat([video[:, :1], video[:, 1:].unflatten(1, (-1, 4)).mean(2)], dim=1)
            pooled = torch.nn.functional.avg_pool2d(frames.transpose(0, 1), 8).transpose(0, 1)
            out.append(torch.einsum("oc,cthw->othw", self.down, pooled))
        return out

    def decode(self, latents):
        out = []
        for latent in latents:  # [16, T', h, w]
            self.decoded.append(latent.clone())
            frames = torch.cat([latent[:, :1], latent[:, 1:].repeat_interleave(4, dim=1)], dim=1)
            pixels = torch.einsum("oc,cthw->othw", self.up, frames)
            out.append(pixels.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3).tanh())
        return out


class _FakeAudio:
    def __init__(self, frames: int) -> None:
        self.model = torch.nn.Identity()
        generator = torch.Generator().manual_seed(13)
        self.features = torch.randn(frames, NUM_WAV2VEC_LAYERS, AUDIO_DIM, generator=generator)

    def extract_audio_feat(self, path, return_all_layers=False):
        return self.features

    def get_audio_embed_bucket_fps(self, z, fps, batch_frames, m=0):
        return z.clone(), z.shape[0] // batch_frames


def test_generate_runs_the_same_loop(model, tmp_path) -> None:
    """WanS2V.generate on the tiny model gives the latents of prefill + reference_clip per clip."""
    from PIL import Image

    infer_frames, num_clips, seed = 24, 2, 5
    assert latent_frames_per_clip(infer_frames) == CLIP_FRAMES
    height, width = 8 * LATENT_HEIGHT, 8 * LATENT_WIDTH
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(14))
    image_path = tmp_path / "ref.png"
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(image_path)
    text, vae, audio = _FakeText(), _FakeVae(), _FakeAudio(num_clips * infer_frames)
    offsets = [4, 9, 17, 30] * (num_clips * NUM_BLOCKS)

    pipeline = reference_pipeline(model, text_encoder=text, vae=vae, checkpoint_dir=tmp_path, audio_encoder=audio)
    with fixed_ref_rope_offsets(offsets) as used:
        video = reference_generate(
            pipeline, ref_image_path=image_path, audio_path="speech.wav", prompt="a person speaking",
            size=(height, width), seed=seed, infer_frames=infer_frames, sampling_steps=NUM_STEPS,
        )
    assert len(used) == len(offsets)
    assert video.shape == (3, num_clips * infer_frames - 3, height, width)
    assert torch.isfinite(video).all()

    # The same inputs through the harness's own prefill and block loop.
    ref_pixels = (pixels.permute(2, 0, 1).float() / 255.0 * 2 - 1)[None, :, None]
    ref_latents = torch.stack(vae.encode(ref_pixels.repeat(1, 1, 5, 1, 1)))[:, :, 1:]
    motion_latents = torch.stack(vae.encode(ref_pixels.repeat(1, 1, MOTION_FRAMES[0], 1, 1)))
    context = text.context[None]
    features = audio.features.permute(1, 2, 0)[None]  # [1, 25, audio_dim, T]
    caches = new_reference_caches(model, NUM_STEPS, CLIP_FRAMES, TOKENS_PER_FRAME)
    reference_prefill(model, caches, context, ref_latents, motion_latents)
    with fixed_ref_rope_offsets(offsets):
        for clip in range(num_clips):
            noise = torch.randn(
                16, CLIP_FRAMES, LATENT_HEIGHT, LATENT_WIDTH, generator=torch.Generator().manual_seed(seed + clip)
            )[None]
            clip_audio = features[..., clip * infer_frames : (clip + 1) * infer_frames]
            expected = reference_clip(
                model, caches, noise, context, clip_audio, ref_latents, motion_latents, clip_index=clip
            )
            decoded = vae.decoded[clip][:, -CLIP_FRAMES:]
            assert torch.equal(decoded, expected[0]), clip


# --- the reference's own configuration -------------------------------------------------------


def test_the_run_is_the_single_gpu_scripts():
    """The script's flags over the inference script's argparse defaults."""
    arguments = reference_run_arguments()
    assert (arguments["infer_frames"], arguments["sample_steps"], arguments["sample_solver"]) == ("48", "4", "euler")
    assert arguments["single_gpu"] is True and arguments["enable_online_decode"] is False  # a flag; a default


def test_the_harness_sizes_are_the_references(model, tmp_path):
    write_reference_wav2vec2(tmp_path, AUDIO_DIM)
    pipeline = reference_pipeline(model, text_encoder=_FakeText(), vae=_FakeVae(), checkpoint_dir=tmp_path)
    settings = reference_fast_settings(pipeline)
    assert FRAMES_PER_BLOCK == settings.latent_frames_per_block
    assert MOTION_FRAMES == (settings.motion_frames, (settings.motion_frames + 3) // 4)
    assert REF_ROPE_OFFSET_RANGE == settings.ref_rope_offsets
    assert model.casual_audio_encoder.weights.shape[1] == NUM_WAV2VEC_LAYERS
    # the pipeline's own audio encoder, on the wav2vec2 written where the config says
    assert pipeline.audio_encoder.model.config.num_hidden_layers + 1 == NUM_WAV2VEC_LAYERS
    assert next(pipeline.audio_encoder.model.parameters()).dtype == torch.float32
