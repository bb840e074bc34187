"""Tiny random-weight Wan2.2-S2V components, written as the official checkpoint publishes them.

The tests (and `scripts/measure_loader_memory.py`) build them here because no real weights can be
downloaded. The official names are written out independently of the converters under test, from
the official modules' structure (`wan/modules/t5.py`, `wan/modules/vae2_1.py`).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from transformers import (
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
)

from tests import wan_reference

TINY_T5 = {
    "vocab_size": 48,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 40,
    "num_heads": 4,
    "num_layers": 2,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0,
}
TINY_VAE = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "latents_mean": [0.1, -0.2, 0.3, -0.4],
    "latents_std": [1.5, 0.5, 2.0, 1.25],
}
TINY_TEXT_LEN = 16
_WORDS = ["a", "person", "speaking", "man", "woman", "talks", "to", "the", "camera", "smiling", "。", "，"]


def reference_module(monkeypatch: pytest.MonkeyPatch, name: str) -> types.ModuleType:
    """`wan_reference.reference_module(name)`, with what the encoder files need on top.

    audio_encoder.py imports librosa only to read files (the tests hand it samples instead), and
    t5.py evaluates torch.cuda.current_device() as a default argument when it is imported.
    """
    if "librosa" not in sys.modules and importlib.util.find_spec("librosa") is None:
        monkeypatch.setitem(sys.modules, "librosa", types.ModuleType("librosa"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    return wan_reference.reference_module(name)


# --- speech ----------------------------------------------------------------------------------


def write_tiny_wav2vec2(folder: Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """A wav2vec2 CTC folder laid out like `wav2vec2-large-xlsr-53-english/` (stable layer norm)."""
    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        vocab_size=8,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        conv_dim=(16,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        pad_token_id=0,
    )
    model = Wav2Vec2ForCTC(config).eval()
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    vocab = folder / "vocab.json"
    vocab.write_text('{"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5, "B": 6, "C": 7}')
    Wav2Vec2CTCTokenizer(str(vocab)).save_pretrained(folder)
    return folder


def speech_samples(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced-looking test signal: harmonics with a syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.3 * voice * envelope + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


# --- text ------------------------------------------------------------------------------------


def write_tiny_tokenizer(folder: Path) -> Path:
    """A T5 (unigram) tokenizer with a few dozen pieces, saved like `google/umt5-xxl/`."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -3.0 - i * 0.1) for i, word in enumerate(_WORDS)]
    pieces += [(letter, -8.0) for letter in "abcdefghijklmnopqrstuvwxyz"]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(folder)
    return folder


def tiny_umt5(seed: int = 0, config: dict = TINY_T5) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    model = UMT5EncoderModel(UMT5Config(**config, is_encoder_decoder=False)).eval()
    with torch.no_grad():  # random, well-scaled norms instead of ones
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def official_t5_state_dict(model: UMT5EncoderModel) -> dict[str, torch.Tensor]:
    """`model`'s weights under the names of the official `T5Encoder` (umt5 layout)."""
    parts = {
        "layer.0.layer_norm.weight": "norm1.weight",
        "layer.0.SelfAttention.q.weight": "attn.q.weight",
        "layer.0.SelfAttention.k.weight": "attn.k.weight",
        "layer.0.SelfAttention.v.weight": "attn.v.weight",
        "layer.0.SelfAttention.o.weight": "attn.o.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
        "layer.1.layer_norm.weight": "norm2.weight",
        "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
        "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
        "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
    }
    state = model.state_dict()
    official = {
        "token_embedding.weight": state["shared.weight"],
        "norm.weight": state["encoder.final_layer_norm.weight"],
    }
    for i in range(model.config.num_layers):
        for ours, theirs in parts.items():
            official[f"blocks.{i}.{theirs}"] = state[f"encoder.block.{i}.{ours}"]
    return {key: value.clone() for key, value in official.items()}


# --- VAE -------------------------------------------------------------------------------------


def tiny_vae(seed: int = 0, config: dict = TINY_VAE) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    model = AutoencoderKLWan(**config).eval()
    with torch.no_grad():  # diffusers zero-initialises some layers; make every weight count
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.5, 1.5)
            elif param.dim() > 1:
                fan_in = param[0].numel()
                param.normal_(0.0, (1.0 / fan_in) ** 0.5)
            else:
                param.normal_(0.0, 0.05)
    return model


def well_conditioned_vae(config: dict):
    """A tiny random VAE whose kernels are scaled by 0.4, so that it is well-conditioned.

    With the default random initialisation a decode amplifies differences in its input about
    600x and an encode 35x, so float noise of 1e-7 in a clip's latents grows past 1e-1 after a
    clip or two of decoding and re-encoding the motion history: two correct implementations then
    differ, and so does one implementation between thread counts. Scaled, both gains are below 1,
    while a clip's frames still change by a quarter of their range with their decoding context,
    so a wrong context or history is still caught. For loops compared over several clips.
    """
    model = tiny_vae(config=config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(0.4)
    return model


def official_vae_state_dict(model: AutoencoderKLWan) -> dict[str, torch.Tensor]:
    """`model`'s weights under the names of the official `WanVAE_` (flat block lists)."""
    nrb = model.config.num_res_blocks
    residual = {
        "norm1.gamma": "residual.0.gamma",
        "conv1.weight": "residual.2.weight",
        "conv1.bias": "residual.2.bias",
        "norm2.gamma": "residual.3.gamma",
        "conv2.weight": "residual.6.weight",
        "conv2.bias": "residual.6.bias",
        "conv_shortcut.weight": "shortcut.weight",
        "conv_shortcut.bias": "shortcut.bias",
    }
    renames = {
        "quant_conv.": "conv1.",
        "post_quant_conv.": "conv2.",
        "encoder.conv_in.": "encoder.conv1.",
        "decoder.conv_in.": "decoder.conv1.",
        "encoder.norm_out.": "encoder.head.0.",
        "encoder.conv_out.": "encoder.head.2.",
        "decoder.norm_out.": "decoder.head.0.",
        "decoder.conv_out.": "decoder.head.2.",
    }
    official = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        name = key
        for ours, theirs in renames.items():
            if key.startswith(ours):
                name = theirs + key[len(ours):]
        if parts[1] == "mid_block":
            index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[2:4])]
            leaf = ".".join(parts[4:])
            name = f"{parts[0]}.middle.{index}.{residual.get(leaf, leaf)}"
        elif parts[1] == "down_blocks":
            leaf = ".".join(parts[3:])
            name = f"encoder.downsamples.{parts[2]}.{residual.get(leaf, leaf)}"
        elif parts[1] == "up_blocks":
            stage = int(parts[2])
            if parts[3] == "resnets":
                index, leaf = stage * (nrb + 2) + int(parts[4]), ".".join(parts[5:])
            else:
                index, leaf = stage * (nrb + 2) + nrb + 1, ".".join(parts[5:])
            name = f"decoder.upsamples.{index}.{residual.get(leaf, leaf)}"
        official[name] = value.clone()
    return official


# --- transformer -----------------------------------------------------------------------------

# Official `WanModel_S2V` config.json of a toy model with the 14B options.
TINY_OFFICIAL_TRANSFORMER_CONFIG = {
    "_class_name": "WanModel_S2V",
    "model_type": "s2v",
    "dim": 32,
    "ffn_dim": 48,
    "freq_dim": 16,
    "num_heads": 2,
    "num_layers": 3,
    "in_dim": 16,
    "out_dim": 16,
    "cond_dim": 16,
    "audio_dim": 32,
    "num_audio_token": 4,
    "enable_adain": True,
    "adain_mode": "attn_norm",
    "audio_inject_layers": [0, 2],
    "zero_timestep": True,
    "enable_motioner": False,
    "add_last_motion": True,
    "enable_tsm": False,
    "enable_framepack": True,
    "framepack_drop_mode": "padd",
    "motion_frames": 73,
    "eps": 1e-6,
}

# Our transformer names -> the official ones, written from `wan/modules/s2v/model_s2v.py`.
_OFFICIAL_TRANSFORMER_NAMES = [
    (r"pose_embedding\.", "cond_encoder."),
    (r"token_type_embedding\.", "trainable_cond_mask."),
    (r"text_embedder\.linear_1\.", "text_embedding.0."),
    (r"text_embedder\.linear_2\.", "text_embedding.2."),
    (r"time_embedder\.linear_1\.", "time_embedding.0."),
    (r"time_embedder\.linear_2\.", "time_embedding.2."),
    (r"time_proj\.", "time_projection.1."),
    (r"motion_embedding\.proj_1x\.", "frame_packer.proj."),
    (r"motion_embedding\.proj_(2x|4x)\.", r"frame_packer.proj_\1."),
    (r"audio_encoder\.layer_weights", "casual_audio_encoder.weights"),
    (r"audio_encoder\.local_conv_in\.", "casual_audio_encoder.encoder.conv1_local.conv."),
    (r"audio_encoder\.global_conv_in\.", "casual_audio_encoder.encoder.conv1_global.conv."),
    (r"audio_encoder\.conv_down_1\.", "casual_audio_encoder.encoder.conv2.conv."),
    (r"audio_encoder\.conv_down_2\.", "casual_audio_encoder.encoder.conv3.conv."),
    (r"audio_encoder\.global_proj\.", "casual_audio_encoder.encoder.final_linear."),
    (r"audio_encoder\.padding_token", "casual_audio_encoder.encoder.padding_tokens"),
    (r"audio_injectors\.(\d+)\.attn\.", r"audio_injector.injector.\1."),
    (r"audio_injectors\.(\d+)\.norm\.linear\.", r"audio_injector.injector_adain_layers.\1.linear."),
    (r"\.to_q\.", ".q."), (r"\.to_k\.", ".k."), (r"\.to_v\.", ".v."), (r"\.to_out\.0\.", ".o."),
    (r"blocks\.(\d+)\.cross_attn_norm\.", r"blocks.\1.norm3."),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.modulation"),
    (r"proj_out\.", "head.head."),
    (r"^scale_shift_table", "head.modulation"),
]


def tiny_transformer_from_official_config(seed: int = 0):
    from model.wan_s2v.convert_transformer import convert_transformer_config
    from model.wan_s2v.transformer import WanS2VTransformer3DModel

    torch.manual_seed(seed)
    model = WanS2VTransformer3DModel(**convert_transformer_config(TINY_OFFICIAL_TRANSFORMER_CONFIG)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.05)
    return model


def official_transformer_state_dict(model) -> dict[str, torch.Tensor]:
    official = {}
    for key, value in model.state_dict().items():
        name = key
        for pattern, replacement in _OFFICIAL_TRANSFORMER_NAMES:
            name = re.sub(pattern, replacement, name)
        official[name] = value.clone()
    return official


# --- the whole official layout ---------------------------------------------------------------


def write_official_checkpoint(
    folder: Path,
    transformer_state: dict[str, torch.Tensor],
    transformer_config: dict,
    vae_state: dict[str, torch.Tensor],
    t5_state: dict[str, torch.Tensor],
    shard_bytes: int,
    wav2vec_hidden_size: int = 32,
) -> Path:
    """Write a checkpoint folder laid out as `Wan-AI/Wan2.2-S2V-14B` publishes it."""
    from safetensors.torch import save_file

    from model.wan_s2v import config

    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in transformer_state.items():
        if size and size + tensor.nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.contiguous()
        size += tensor.nbytes
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        name = f"diffusion_pytorch_model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    total = sum(tensor.nbytes for tensor in transformer_state.values())
    (folder / config.TRANSFORMER_INDEX_FILE).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (folder / config.TRANSFORMER_CONFIG_FILE).write_text(json.dumps(transformer_config))
    torch.save(vae_state, folder / config.VAE_CHECKPOINT_FILE)
    torch.save(t5_state, folder / config.T5_CHECKPOINT_FILE)
    write_tiny_tokenizer(folder / config.T5_TOKENIZER_DIR)
    write_tiny_wav2vec2(folder / config.WAV2VEC_DIR, hidden_size=wav2vec_hidden_size)
    return folder


# --- the Live Avatar LoRA --------------------------------------------------------------------

# The layers Live Avatar's peft config (target_modules "q,k,v,o,ffn.0,ffn.2", matched by suffix)
# reaches in the official model, by their weights' official names.
LIVE_AVATAR_LORA_TARGETS = re.compile(
    r"(blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]|blocks\.\d+\.ffn\.[02]|audio_injector\.injector\.\d+\.[qkvo])\.weight"
)


def tiny_live_avatar_lora(
    official_weights: dict[str, torch.Tensor], rank: int = 128, seed: int = 2, prefix: str = "",
    adapter: str = ".default",
) -> dict[str, torch.Tensor]:
    """A random LoRA of every targeted layer of `official_weights` (an official state dict), spelled
    as peft's model names it (`[base_model.model.]blocks.0.self_attn.q.lora_A.default.weight`), at
    Live Avatar's rank 128 unless told otherwise. Edit the dict for a file that differs."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, weight in official_weights.items():
        if LIVE_AVATAR_LORA_TARGETS.fullmatch(key):
            name = f"{prefix}{key.removesuffix('.weight')}"
            out_features, in_features = weight.shape
            tensors[f"{name}.lora_A{adapter}.weight"] = torch.randn(rank, in_features, generator=generator) * 0.1
            tensors[f"{name}.lora_B{adapter}.weight"] = torch.randn(out_features, rank, generator=generator) * 0.1
    return tensors


def write_tiny_live_avatar_lora(path: Path, official_weights: dict[str, torch.Tensor], **options) -> Path:
    """`tiny_live_avatar_lora(official_weights, **options)` written as a safetensors file at `path`."""
    from safetensors.torch import save_file

    save_file(tiny_live_avatar_lora(official_weights, **options), str(path))
    return path
