"""From the reference's `WanModel` layout (wan_video_dit.py) to `OmniAvatarTransformer3DModel`.

The published weights are Wan2.1-T2V's shards (official names) plus OmniAvatar's
`pytorch_model.pt` (the LoRA, the widened patch embedding and the audio modules). The Wan2.1 names
become diffusers' (model/wan_common/convert_wan21.py: the official names are the same for T2V
and I2V); the audio modules' names say what they are. Tensors are never reshaped:
only names change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from model.wan_common.convert_wan21 import compile_rules, convert_wan21_key

_AUDIO_RULES = compile_rules(
    (
        (r"audio_proj\.proj\.(?P<p>weight|bias)", "audio_injection.pack.proj.{p}"),
        (r"audio_proj\.norm_out\.(?P<p>weight|bias)", "audio_injection.pack.norm.{p}"),
        (r"audio_cond_projs\.(?P<i>\d+)\.(?P<p>weight|bias)", "audio_injection.block_projections.{i}.{p}"),
    )
)
# the reference's I2V-only parts (image cross-attention, CLIP embedding): not in a T2V model
_IMAGE_ONLY = re.compile(r"(img_emb\..*|blocks\.\d+\.cross_attn\.(k_img|v_img|norm_k_img)\..*)")


def convert_transformer_key(published_key: str) -> str:
    """Our parameter name for a reference one; KeyError for a name OmniAvatar's model does not have."""
    if _IMAGE_ONLY.fullmatch(published_key):
        raise KeyError(f"OmniAvatar's transformer is Wan2.1-T2V: {published_key!r} belongs to an I2V model")
    return convert_wan21_key(published_key, _AUDIO_RULES, model="OmniAvatar's transformer")


def convert_transformer_state_dict(published: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's state dict under our names (the same tensors, not copies)."""
    return {convert_transformer_key(key): tensor for key, tensor in published.items()}

