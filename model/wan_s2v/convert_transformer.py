"""From the official Wan2.2-S2V checkpoint (`WanModel_S2V`) to `WanS2VTransformer3DModel`.

Key names follow diffusers' Wan naming where the layer is the same (`to_q`, `ffn.net.0.proj`,
`scale_shift_table`, ...) and say what the S2V-specific layers are otherwise. Tensors are never
reshaped: only their names change, so a loader can rename keys one tensor at a time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}
_ATTENTION_PART = r"(?P<attn>q|k|v|o|norm_q|norm_k)"
_AUDIO_ENCODER = "casual_audio_encoder.encoder."

# (official name pattern, our name); `attn` groups go through _ATTENTION.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"patch_embedding\.(?P<p>weight|bias)", "patch_embedding.{p}"),
        (r"cond_encoder\.(?P<p>weight|bias)", "pose_embedding.{p}"),
        (r"trainable_cond_mask\.weight", "token_type_embedding.weight"),
        (r"text_embedding\.0\.(?P<p>weight|bias)", "text_embedder.linear_1.{p}"),
        (r"text_embedding\.2\.(?P<p>weight|bias)", "text_embedder.linear_2.{p}"),
        (r"time_embedding\.0\.(?P<p>weight|bias)", "time_embedder.linear_1.{p}"),
        (r"time_embedding\.2\.(?P<p>weight|bias)", "time_embedder.linear_2.{p}"),
        (r"time_projection\.1\.(?P<p>weight|bias)", "time_proj.{p}"),
        (r"frame_packer\.proj\.(?P<p>weight|bias)", "motion_embedding.proj_1x.{p}"),
        (r"frame_packer\.proj_(?P<scale>2x|4x)\.(?P<p>weight|bias)", "motion_embedding.proj_{scale}.{p}"),
        (r"casual_audio_encoder\.weights", "audio_encoder.layer_weights"),
        (re.escape(_AUDIO_ENCODER) + r"conv1_local\.conv\.(?P<p>weight|bias)", "audio_encoder.local_conv_in.{p}"),
        (re.escape(_AUDIO_ENCODER) + r"conv1_global\.conv\.(?P<p>weight|bias)", "audio_encoder.global_conv_in.{p}"),
        (re.escape(_AUDIO_ENCODER) + r"conv2\.conv\.(?P<p>weight|bias)", "audio_encoder.conv_down_1.{p}"),
        (re.escape(_AUDIO_ENCODER) + r"conv3\.conv\.(?P<p>weight|bias)", "audio_encoder.conv_down_2.{p}"),
        (re.escape(_AUDIO_ENCODER) + r"final_linear\.(?P<p>weight|bias)", "audio_encoder.global_proj.{p}"),
        (re.escape(_AUDIO_ENCODER) + r"padding_tokens", "audio_encoder.padding_token"),
        (
            r"audio_injector\.injector\.(?P<i>\d+)\." + _ATTENTION_PART + r"\.(?P<p>weight|bias)",
            "audio_injectors.{i}.attn.{attn}.{p}",
        ),
        (
            r"audio_injector\.injector_adain_layers\.(?P<i>\d+)\.linear\.(?P<p>weight|bias)",
            "audio_injectors.{i}.norm.linear.{p}",
        ),
        (
            r"blocks\.(?P<i>\d+)\.(?P<kind>self_attn|cross_attn)\." + _ATTENTION_PART + r"\.(?P<p>weight|bias)",
            "blocks.{i}.{kind}.{attn}.{p}",
        ),
        (r"blocks\.(?P<i>\d+)\.norm3\.(?P<p>weight|bias)", "blocks.{i}.cross_attn_norm.{p}"),
        (r"blocks\.(?P<i>\d+)\.ffn\.0\.(?P<p>weight|bias)", "blocks.{i}.ffn.net.0.proj.{p}"),
        (r"blocks\.(?P<i>\d+)\.ffn\.2\.(?P<p>weight|bias)", "blocks.{i}.ffn.net.2.{p}"),
        (r"blocks\.(?P<i>\d+)\.modulation", "blocks.{i}.scale_shift_table"),
        (r"head\.head\.(?P<p>weight|bias)", "proj_out.{p}"),
        (r"head\.modulation", "scale_shift_table"),
    )
)


def convert_transformer_key(official_key: str) -> str:
    """Our parameter name for an official `WanModel_S2V` one; KeyError for names it does not have."""
    for pattern, replacement in _RULES:
        match = pattern.fullmatch(official_key)
        if match:
            groups = match.groupdict()
            if "attn" in groups:
                groups["attn"] = _ATTENTION[groups["attn"]]
            return replacement.format(**groups)
    raise KeyError(f"not a parameter of the official Wan2.2-S2V transformer: {official_key!r}")


def convert_transformer_state_dict(official: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official state dict under our names (the same tensors, not copies)."""
    return {convert_transformer_key(key): tensor for key, tensor in official.items()}


# The official constructor's defaults: what `WanModel_S2V.from_pretrained` uses for a key that
# config.json leaves out.
_OFFICIAL_DEFAULTS: dict[str, Any] = {
    "cond_dim": 0,
    "audio_dim": 5120,
    "num_audio_token": 4,
    "enable_adain": False,
    "adain_mode": "attn_norm",
    "audio_inject_layers": [0, 4, 8, 12, 16, 20, 24, 27],
    "zero_timestep": False,
    "enable_motioner": True,
    "add_last_motion": True,
    "enable_tsm": False,
    "trainable_token_pos_emb": False,
    "enable_framepack": False,
    "model_type": "s2v",
    "patch_size": [1, 2, 2],
    "text_len": 512,
    "in_dim": 16,
    "dim": 2048,
    "ffn_dim": 8192,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 16,
    "num_layers": 32,
    "cross_attn_norm": True,
    "eps": 1e-6,
}

# `WanModel_S2V.ignore_for_config`: diffusers never passes these from config.json, so the
# official model always has the defaults.
_IGNORED_BY_OFFICIAL = ("patch_size", "cross_attn_norm", "qk_norm", "text_dim", "window_size")

# Official options this implementation does not have, and the only value it supports.
_REQUIRED: dict[str, Any] = {
    "model_type": "s2v",
    "enable_motioner": False,
    "enable_framepack": True,
    "add_last_motion": True,
    "enable_tsm": False,
    "trainable_token_pos_emb": False,
}


def convert_transformer_config(official: Mapping[str, Any]) -> dict[str, Any]:
    """`WanS2VTransformer3DModel` keyword arguments from the official config.json.

    Raises ValueError for official options this implementation does not support.
    """
    given = {key: value for key, value in official.items() if key not in _IGNORED_BY_OFFICIAL}
    config = {**_OFFICIAL_DEFAULTS, **given}
    for key, required in _REQUIRED.items():
        if config[key] != required:
            raise ValueError(f"unsupported Wan2.2-S2V transformer option {key}={config[key]!r} (only {required!r})")
    if config["enable_adain"] and config["adain_mode"] != "attn_norm":
        raise ValueError(f"unsupported Wan2.2-S2V transformer option adain_mode={config['adain_mode']!r}")
    if config["cond_dim"] <= 0:
        raise ValueError("the Wan2.2-S2V transformer needs a pose condition encoder (cond_dim > 0)")
    if config["dim"] % config["num_heads"]:
        raise ValueError(f"dim={config['dim']} is not a multiple of num_heads={config['num_heads']}")
    return {
        "patch_size": tuple(config["patch_size"]),
        "in_channels": config["in_dim"],
        "out_channels": config["out_dim"],
        "pose_channels": config["cond_dim"],
        "num_attention_heads": config["num_heads"],
        "attention_head_dim": config["dim"] // config["num_heads"],
        "ffn_dim": config["ffn_dim"],
        "num_layers": config["num_layers"],
        "freq_dim": config["freq_dim"],
        "text_dim": config["text_dim"],
        "text_len": config["text_len"],
        "cross_attn_norm": config["cross_attn_norm"],
        "eps": config["eps"],
        "audio_dim": config["audio_dim"],
        "num_audio_tokens": config["num_audio_token"],
        # the official model numbers its injectors in block order
        "audio_inject_layers": tuple(sorted(set(config["audio_inject_layers"]))),
        "audio_adaptive_norm": config["enable_adain"],
        "zero_timestep": config["zero_timestep"],
    }
