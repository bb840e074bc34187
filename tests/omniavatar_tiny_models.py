"""Tiny random-weight OmniAvatar components for the tests, laid out as the published ones are.

No real weights can be downloaded here; these have the published structure at toy sizes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Wav2Vec2ForCTC

from model.omniavatar.convert_transformer import convert_transformer_state_dict
from model.omniavatar.transformer import OmniAvatarTransformer3DModel
from tests.reference_harness import write_tiny_wav2vec2


def write_tiny_wav2vec2_960h(folder: Path, seed: int = 0, hidden_size: int = 16, layers: int = 2) -> Path:
    """A wav2vec2 folder shaped like `facebook/wav2vec2-base-960h` (a CTC checkpoint with
    group-normalised convolutions, post-layer-norm transformer layers, the standard 320-sample
    hop, a normalising feature extractor), at toy sizes."""
    return write_tiny_wav2vec2(
        folder, Wav2Vec2ForCTC, seed, conv_channels=8, vocab_size=8, hidden_size=hidden_size,
        num_hidden_layers=layers, intermediate_size=24,
    )


# --- transformer -------------------------------------------------------------------------------

# The reference's `WanModel` arguments at toy sizes (the published 14B: dim 5120, 40 heads, 40
# layers, in_dim 33). Six layers put the audio before blocks 2 and 3 only, so a block wrongly fed
# (or skipped) shows. head_dim 12 splits its rotary axes alike in both (4 + 4 + 4). The speech rows
# keep their published width (768 x 14): the reference fixes it.
TINY_TRANSFORMER = {
    "dim": 24,
    "in_dim": 9,
    "ffn_dim": 32,
    "out_dim": 4,
    "text_dim": 20,
    "freq_dim": 16,
    "eps": 1e-6,
    "patch_size": (1, 2, 2),
    "num_heads": 2,
    "num_layers": 6,
    "has_image_input": False,
    "audio_hidden_size": 8,
}
SPEECH_FEATURE_DIM = 768 * 14


def our_transformer_arguments(reference: dict) -> dict:
    """`OmniAvatarTransformer3DModel` arguments for the reference's `WanModel` ones."""
    return {
        "patch_size": tuple(reference["patch_size"]),
        "num_attention_heads": reference["num_heads"],
        "attention_head_dim": reference["dim"] // reference["num_heads"],
        "in_channels": reference["in_dim"],
        "out_channels": reference["out_dim"],
        "text_dim": reference["text_dim"],
        "freq_dim": reference["freq_dim"],
        "ffn_dim": reference["ffn_dim"],
        "num_layers": reference["num_layers"],
        "eps": reference["eps"],
        "audio_hidden_size": reference["audio_hidden_size"],
    }


def our_transformer(reference_state: dict[str, torch.Tensor]) -> OmniAvatarTransformer3DModel:
    """`OmniAvatarTransformer3DModel` at TINY_TRANSFORMER's sizes with the reference's weights, float32, eval."""
    model = OmniAvatarTransformer3DModel(
        **our_transformer_arguments(TINY_TRANSFORMER), audio_feature_dim=SPEECH_FEATURE_DIM
    )
    model.load_state_dict(convert_transformer_state_dict(reference_state), strict=True)
    return model.float().eval()


def our_prediction(model: OmniAvatarTransformer3DModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One call of our model on `transformer_inputs`: the latents beside the condition, as the reference's `y`."""
    with torch.no_grad():
        return model(
            torch.cat([inputs["latents"], inputs["condition"]], dim=1), inputs["timestep"], inputs["text"],
            inputs["speech"], return_dict=False,
        )[0]


def transformer_inputs(latent_frames: int = 3, height: int = 6, width: int = 8, seed: int = 0) -> dict:
    """Random inputs of one denoising step at the tiny sizes (batch 1, as the reference samples)."""
    generator = torch.Generator().manual_seed(seed)
    config = TINY_TRANSFORMER

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    return {
        "latents": draw(1, config["out_dim"], latent_frames, height, width),
        "condition": draw(1, config["in_dim"] - config["out_dim"], latent_frames, height, width),
        "text": draw(1, 7, config["text_dim"]),
        "speech": draw(1, 1 + 4 * (latent_frames - 1), SPEECH_FEATURE_DIM),
        "timestep": torch.tensor([637.0]),
    }
