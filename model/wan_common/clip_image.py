"""The image encoder of the Wan2.1 I2V models: open-clip XLM-RoBERTa ViT-H/14's vision tower.

The official checkpoint (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` in
`Wan-AI/Wan2.1-I2V-14B-480P`) holds the whole CLIP; the I2V models use only the vision tower's
token states after its second-to-last block (`CLIPModel.visual`, `use_31_block=True`, in the
official `wan/modules/clip.py`): 257 tokens of 1280 for a 224 x 224 image. Here that tower is
transformers' `CLIPVisionModel` with the last block left out, so its `last_hidden_state` is that
output (its post-layernorm applies only to the pooled output, which is not used).

Frames come in as the VAE takes them ([-1, 1]); they are resized bicubically to the tower's size
and normalised with CLIP's mean and deviation, as the official `visual` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

# open-clip's normalisation for its CLIP models (the official `_clip`'s non-SigLIP branch)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ViT-H/14 as the official `clip_xlm_roberta_vit_h_14` builds it
VIT_H_14 = {
    "image_size": 224,
    "patch_size": 14,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
}
_VISUAL = "visual."


def vision_config(tower: Mapping[str, Any] = VIT_H_14) -> CLIPVisionConfig:
    """The `CLIPVisionConfig` of `tower` without its last block (the I2V models read the one before)."""
    return CLIPVisionConfig(**{**tower, "num_hidden_layers": tower["num_hidden_layers"] - 1})


class ImageEncoder(torch.nn.Module):
    """Frames in [-1, 1] -> the vision tower's token states after its second-to-last block."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: CLIPVisionModel) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [batch, 3, height, width] in [-1, 1] -> [batch, tokens, hidden] (257 x 1280 for ViT-H/14)."""
        size = self.model.config.image_size
        pixels = F.interpolate(frames.float(), size=(size, size), mode="bicubic", align_corners=False)
        pixels = (pixels * 0.5 + 0.5 - self.mean) / self.std
        return self.model(pixel_values=pixels.to(self.model.dtype)).last_hidden_state


def convert_visual_state_dict(official: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """`CLIPVisionModel` (of `vision_config`) weights from the official CLIP state dict, named as
    the model's `state_dict` names them.

    Only the vision tower is taken, without its last block (`num_layers` is the tower's, 32 for
    ViT-H/14) and its projection head; the text tower is skipped. The fused attention input
    projection is split into queries, keys and values (views, not copies).
    """
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in official.items():
        if not key.startswith(_VISUAL):
            continue
        name = key[len(_VISUAL) :]
        if name.startswith("transformer."):
            _, index, rest = name.split(".", 2)
            if int(index) >= num_layers - 1:
                continue
            layer = f"encoder.layers.{index}."
            if rest.startswith("attn.to_qkv."):
                kind = rest.rsplit(".", 1)[1]
                for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                    ours[f"{layer}self_attn.{part}.{kind}"] = chunk
                continue
            ours[layer + _LAYER_NAMES[rest.rsplit(".", 1)[0]] + "." + rest.rsplit(".", 1)[1]] = tensor
        elif name == "cls_embedding":
            ours["embeddings.class_embedding"] = tensor.reshape(-1)
        elif name == "pos_embedding":
            ours["embeddings.position_embedding.weight"] = tensor.reshape(tensor.shape[-2:])
        elif name == "patch_embedding.weight":
            ours["embeddings.patch_embedding.weight"] = tensor
        elif name.startswith(("pre_norm.", "post_norm.")):
            norm, kind = name.split(".")
            ours[f"{'pre_layrnorm' if norm == 'pre_norm' else 'post_layernorm'}.{kind}"] = tensor
        elif name != "head":
            raise KeyError(f"not a parameter of the official CLIP vision tower: {key!r}")
    return ours


_LAYER_NAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
