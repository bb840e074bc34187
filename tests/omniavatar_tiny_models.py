"""Tiny random-weight OmniAvatar components for the tests, laid out as the published ones are.

No real weights can be downloaded here; these have the published structure at toy sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
TINY_TRANSFORMER: dict[str, Any] = {
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


# --- the published folders, for the backend's end-to-end tests ---------------------------------

# Tiny Wan2.1-T2V configs as `config.json` has them (the published ones name dim, heads, layers,
# in/out channels, freq_dim and eps; text_dim is added here because the tiny umT5 is not 4096 wide).
# The two sizes differ in depth, so a worker that read the wrong folder would fail to load.
TINY_WAN_T2V_CONFIGS: dict[str, dict[str, Any]] = {
    "14B": {"model_type": "t2v", "dim": 24, "num_heads": 2, "num_layers": 6, "ffn_dim": 32, "freq_dim": 16,
            "in_dim": 4, "out_dim": 4, "eps": 1e-6, "text_len": 16, "text_dim": 32},
    "1.3B": {"model_type": "t2v", "dim": 24, "num_heads": 2, "num_layers": 4, "ffn_dim": 32, "freq_dim": 16,
             "in_dim": 4, "out_dim": 4, "eps": 1e-6, "text_len": 16, "text_dim": 32},
}
TINY_LORA_RANK = 4
TINY_AUDIO_HIDDEN = 8
# the reference's official Wan2.1 names of one block, in their order
_BLOCK_NAMES = (
    *(f"{attn}.{part}.{p}" for attn in ("self_attn", "cross_attn") for part in "qkvo" for p in ("weight", "bias")),
    *(f"{attn}.{norm}.weight" for attn in ("self_attn", "cross_attn") for norm in ("norm_q", "norm_k")),
    "norm3.weight", "norm3.bias", "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias", "modulation",
)
_TOP_NAMES = (
    "patch_embedding.weight", "patch_embedding.bias", "text_embedding.0.weight", "text_embedding.0.bias",
    "text_embedding.2.weight", "text_embedding.2.bias", "time_embedding.0.weight", "time_embedding.0.bias",
    "time_embedding.2.weight", "time_embedding.2.bias", "time_projection.1.weight", "time_projection.1.bias",
    "head.head.weight", "head.head.bias", "head.modulation",
)
_LORA_LAYERS = (*(f"{attn}.{part}" for attn in ("self_attn", "cross_attn") for part in "qkvo"), "ffn.0", "ffn.2")


def official_t2v_names(num_layers: int) -> list[str]:
    """Every tensor name of an official Wan2.1-T2V `WanModel` with `num_layers` blocks."""
    return [*_TOP_NAMES, *(f"blocks.{i}.{name}" for i in range(num_layers) for name in _BLOCK_NAMES)]


def tiny_omniavatar_transformer(size: str, audio_feature_dim: int, seed: int) -> OmniAvatarTransformer3DModel:
    """Our model at the tiny size's config (9 input channels: 4 noisy + 4 given + the mask), random."""
    from model.omniavatar.loader import transformer_arguments

    config = TINY_WAN_T2V_CONFIGS[size]
    arguments = transformer_arguments(config, 2 * config["out_dim"] + 1, audio_feature_dim, TINY_AUDIO_HIDDEN)
    torch.manual_seed(seed)
    model = OmniAvatarTransformer3DModel(**arguments).eval()
    with torch.no_grad():  # some layers start at zero; make every weight matter
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def write_tiny_omniavatar_folders(root: Path, size: str, vae_state: dict, t5_state: dict, seed: int = 0) -> None:
    """Wan2.1-T2V-<size>/, OmniAvatar-<size>/ and wav2vec2-base-960h/ under `root`, laid out as
    published: the 14B transformer in shards with an index, the 1.3B in one file; OmniAvatar's
    `config.json` and `pytorch_model.pt` (LoRA pairs in peft's names, the 9-channel patch
    embedding, the audio modules)."""
    import json

    from safetensors.torch import save_file

    from model.omniavatar.convert_transformer import convert_transformer_key
    from model.wan_common.checkpoint import write_safetensors_shards
    from model.wan_common.config import T5_CHECKPOINT_FILE, T5_TOKENIZER_DIR, VAE_CHECKPOINT_FILE
    from tests.wan_tiny_models import write_tiny_tokenizer

    wav2vec = root / "wav2vec2-base-960h"
    if not wav2vec.exists():
        write_tiny_wav2vec2_960h(wav2vec)
    from transformers import Wav2Vec2Config

    wav2vec_config = Wav2Vec2Config.from_pretrained(wav2vec)
    feature_dim = wav2vec_config.hidden_size * (wav2vec_config.num_hidden_layers + 2)
    config = TINY_WAN_T2V_CONFIGS[size]
    model = tiny_omniavatar_transformer(size, feature_dim, seed)
    ours = model.state_dict()
    names = official_t2v_names(config["num_layers"])
    wan = {name: ours[convert_transformer_key(name)].clone() for name in names}
    # Wan2.1's own patch embedding takes the 4 noisy channels only (OmniAvatar's file widens it)
    wan["patch_embedding.weight"] = torch.randn(config["dim"], config["in_dim"], 1, 2, 2)
    wan_dir = root / f"Wan2.1-T2V-{size}"
    wan_dir.mkdir(parents=True)
    (wan_dir / "config.json").write_text(json.dumps(config))
    if size == "14B":
        write_safetensors_shards(list(wan.items()), wan_dir, "diffusion_pytorch_model.safetensors", 3)
    else:
        save_file({k: v.contiguous() for k, v in wan.items()}, str(wan_dir / "diffusion_pytorch_model.safetensors"))
    torch.save(vae_state, wan_dir / VAE_CHECKPOINT_FILE)
    torch.save(t5_state, wan_dir / T5_CHECKPOINT_FILE)
    write_tiny_tokenizer(wan_dir / T5_TOKENIZER_DIR)

    generator = torch.Generator().manual_seed(seed + 1)
    published: dict[str, torch.Tensor] = {}
    for i in range(config["num_layers"]):
        for layer in _LORA_LAYERS:
            weight = wan[f"blocks.{i}.{layer}.weight"]
            published[f"blocks.{i}.{layer}.lora_A.default.weight"] = 0.1 * torch.randn(
                TINY_LORA_RANK, weight.shape[1], generator=generator)
            published[f"blocks.{i}.{layer}.lora_B.default.weight"] = 0.1 * torch.randn(
                weight.shape[0], TINY_LORA_RANK, generator=generator)
    for key, value in ours.items():
        if key.startswith(("patch_embedding.", "audio_injection.")):
            published[_reference_name(key)] = value.clone()
    omniavatar_dir = root / f"OmniAvatar-{size}"
    omniavatar_dir.mkdir()
    torch.save(published, omniavatar_dir / "pytorch_model.pt")
    (omniavatar_dir / "config.json").write_text(json.dumps({
        "train_architecture": "lora", "lora_rank": TINY_LORA_RANK, "lora_alpha": TINY_LORA_RANK / 2,
        "lora_target_modules": "q,k,v,o,ffn.0,ffn.2", "init_lora_weights": "kaiming",
        "in_dim": 2 * config["in_dim"] + 1, "use_audio": True, "i2v": True, "random_prefix_frames": True,
    }))
    # finished as a worker's download leaves them (model/weights.py accepts MODEL_DIR/<folder> then)
    from model.weights import FINISHED_MARKER_NAME

    for folder in (wan_dir, omniavatar_dir, wav2vec):
        (folder / FINISHED_MARKER_NAME).write_text(json.dumps({"repo_id": "tiny", "revision": None}))


def _reference_name(ours: str) -> str:
    """The reference's name of one of our patch-embedding or audio parameters."""
    for theirs, mine in (("audio_proj.proj.", "audio_injection.pack.proj."),
                         ("audio_proj.norm_out.", "audio_injection.pack.norm."),
                         ("audio_cond_projs.", "audio_injection.block_projections.")):
        if ours.startswith(mine):
            return theirs + ours[len(mine):]
    return ours
