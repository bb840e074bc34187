"""From the published InfiniteTalk layout to `InfiniteTalkTransformer3DModel`.

The published weights are the reference's `WanModel` state dict (`wan/modules/multitalk_model.py`):
Wan2.1-I2V-14B's shards (`Wan-AI/Wan2.1-I2V-14B-480P`) plus InfiniteTalk's file
(`MeiGen-AI/InfiniteTalk`, single/ or multi/) holding the audio modules. The Wan2.1 names become
diffusers' (model/wan_common/convert_wan21.py); the audio modules' names say what they
are. Tensors are never reshaped: only names change, so a loader can rename one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from model.wan_common.convert_wan21 import compile_rules, convert_wan21_key

from .config import TEXT_LEN

_AUDIO_ATTENTION = {"q_linear": "to_q", "kv_linear": "to_kv", "proj": "to_out"}
_AUDIO_PROJECTION = {
    "proj1": "first_frame_in",
    "proj1_vf": "later_frames_in",
    "proj2": "hidden",
    "proj3": "tokens_out",
    "norm": "norm",
}

# (published name pattern, our name) for InfiniteTalk's own modules; named groups `audio` and
# `layer` go through the tables above
_AUDIO_RULES = compile_rules(
    (
        (r"blocks\.(?P<i>\d+)\.norm_x\.(?P<p>weight|bias)", "blocks.{i}.norm_audio.{p}"),
        (
            r"blocks\.(?P<i>\d+)\.audio_cross_attn\.(?P<audio>q_linear|kv_linear|proj)\.(?P<p>weight|bias)",
            "blocks.{i}.audio_attn.{audio}.{p}",
        ),
        (r"audio_proj\.(?P<layer>proj1|proj1_vf|proj2|proj3|norm)\.(?P<p>weight|bias)", "audio_projection.{layer}.{p}"),
    )
)
_AUDIO_TABLES = {"audio": _AUDIO_ATTENTION, "layer": _AUDIO_PROJECTION}


def convert_transformer_key(published_key: str) -> str:
    """Our parameter name for a published one; KeyError for a name the published model does not have."""
    return convert_wan21_key(published_key, _AUDIO_RULES, _AUDIO_TABLES, "the published InfiniteTalk transformer")


def convert_transformer_state_dict(published: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published state dict under our names (the same tensors, not copies)."""
    return {convert_transformer_key(key): tensor for key, tensor in published.items()}


# The published config.json (Wan2.1-I2V-14B-480P's) names the Wan2.1 hyper-parameters it changes
# from `WanModel.__init__`'s defaults (which are ours too); the audio modules' are those defaults,
# which the published run never changes.
_CONFIG_NAMES = {
    "patch_size": "patch_size",
    "num_heads": "num_attention_heads",
    "in_dim": "in_channels",
    "out_dim": "out_channels",
    "text_dim": "text_dim",
    "freq_dim": "freq_dim",
    "ffn_dim": "ffn_dim",
    "num_layers": "num_layers",
    "cross_attn_norm": "cross_attn_norm",
    "eps": "eps",
    "audio_window": "audio_window",
    "intermediate_dim": "audio_intermediate_dim",
    "output_dim": "audio_output_dim",
    "context_tokens": "audio_context_tokens",
    "norm_output_audio": "audio_norm_output",
    "vae_scale": "vae_time_stride",
}
# the image encoder's width: the reference's MLPProj(1280, dim) is fixed to CLIP ViT-H/14
IMAGE_DIM = 1280


def convert_transformer_config(published: Mapping[str, Any]) -> dict[str, Any]:
    """`InfiniteTalkTransformer3DModel` arguments from a published `WanModel` config (config.json)."""
    if published.get("model_type", "i2v") != "i2v":
        raise ValueError(f"InfiniteTalk needs the Wan2.1 I2V transformer, not model_type={published['model_type']!r}")
    if int(published.get("text_len", TEXT_LEN)) != TEXT_LEN:
        raise ValueError(f"the transformer takes {TEXT_LEN} text tokens, not text_len={published['text_len']}")
    if tuple(published.get("window_size", (-1, -1))) != (-1, -1):
        raise ValueError("InfiniteTalk's self-attention is global: window_size must be (-1, -1)")
    dim, heads = int(published["dim"]), int(published["num_heads"])
    ours: dict[str, Any] = {
        "attention_head_dim": dim // heads,
        "image_dim": IMAGE_DIM,
        "added_kv_proj_dim": dim,
        "qk_norm": "rms_norm_across_heads" if published.get("qk_norm", True) else None,
    }
    for name, value in published.items():
        if name in _CONFIG_NAMES:
            ours[_CONFIG_NAMES[name]] = tuple(value) if name == "patch_size" else value
    return ours
