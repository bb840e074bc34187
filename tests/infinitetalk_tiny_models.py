"""Tiny random-weight InfiniteTalk components for the tests, written as the published ones are laid out.

No real weights can be downloaded here; these have the published structure at toy sizes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Wav2Vec2ForPreTraining

from tests.reference_harness import write_tiny_wav2vec2


def write_tiny_chinese_wav2vec2(folder: Path, seed: int = 0, hidden_size: int = 32, layers: int = 3) -> Path:
    """A wav2vec2 folder shaped like `TencentGameMate/chinese-wav2vec2-base` (a pre-training
    checkpoint with group-normalised convolutions and post-layer-norm transformer layers, the
    standard 320-sample hop), at toy sizes."""
    return write_tiny_wav2vec2(
        folder, Wav2Vec2ForPreTraining, seed, conv_channels=16, hidden_size=hidden_size, num_hidden_layers=layers,
        intermediate_size=48, codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8,
    )


# --- transformer -------------------------------------------------------------------------------

# The reference's `WanModel` arguments at toy sizes (the published model: dim 5120, 40 heads, 40
# layers, in_dim 36). The image tokens (257 x 1280, CLIP ViT-H/14), the 512 text tokens and the
# audio rows (12 layers x 768, chinese-wav2vec2-base) keep their published sizes: the reference
# fixes them.
TINY_TRANSFORMER = {
    "model_type": "i2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 12,
    "dim": 48,
    "ffn_dim": 64,
    "freq_dim": 16,
    "text_dim": 24,
    "out_dim": 4,
    "num_heads": 4,
    "num_layers": 2,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "audio_window": 5,
    "intermediate_dim": 16,
    "output_dim": 8,
    "context_tokens": 4,
    "vae_scale": 4,
    "norm_input_visual": True,
    "norm_output_audio": True,
}
IMAGE_TOKENS, IMAGE_DIM = 257, 1280
AUDIO_LAYERS, AUDIO_CHANNELS = 12, 768


def transformer_inputs(
    latent_frames: int = 3, height: int = 8, width: int = 12, speakers: int = 1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random inputs of one denoising step at the tiny sizes: noisy latents and the I2V condition,
    umT5-like text states, CLIP-like image tokens, audio windows per speaker."""
    generator = torch.Generator().manual_seed(seed)
    config = TINY_TRANSFORMER
    video_frames = 1 + config["vae_scale"] * (latent_frames - 1)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    return {
        "latents": draw(config["out_dim"], latent_frames, height, width),
        "condition": draw(config["in_dim"] - config["out_dim"], latent_frames, height, width),
        "text": draw(7, config["text_dim"]),
        "image": draw(1, IMAGE_TOKENS, IMAGE_DIM),
        "audio": draw(speakers, video_frames, config["audio_window"], AUDIO_LAYERS, AUDIO_CHANNELS),
    }


def two_speaker_regions(height: int, width: int) -> torch.Tensor:
    """[3, height, width] masks as the reference's default split lays them out: speaker 1 in the
    left half, speaker 2 in the right, then the background (everything else)."""
    regions = torch.zeros(3, height, width)
    regions[0, 1 : height - 1, 1 : width // 2 - 1] = 1
    regions[1, 1 : height - 1, width // 2 + 1 : width - 1] = 1
    regions[2] = (regions[0] + regions[1] == 0).float()
    return regions
