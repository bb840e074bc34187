"""The Wan2.1 I2V image encoder (model/wan_common/clip_image.py) that InfiniteTalk conditions on:
the official checkpoint's conversion, and parity with the official `CLIPModel.visual` on a tiny
random CLIP (INFINITETALK_REFERENCE_REPO's wan/modules/clip.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionModel

from model.wan_common.clip_image import VIT_H_14, ImageEncoder, convert_visual_state_dict, vision_config
from tests.infinitetalk_reference import reference_clip_visual, requires_infinitetalk

LAYERS, HIDDEN = 3, 32
# the official builder's arguments at toy sizes, and the same tower in transformers' terms
TINY_CLIP = {
    "image_size": 28, "patch_size": 14, "vision_dim": HIDDEN, "vision_heads": 2, "vision_layers": LAYERS,
    "embed_dim": 16, "vocab_size": 50, "max_text_len": 10, "text_dim": 16, "text_heads": 2, "text_layers": 1,
}
TINY_TOWER = {
    **VIT_H_14, "image_size": 28, "patch_size": 14, "hidden_size": HIDDEN, "intermediate_size": 4 * HIDDEN,
    "num_attention_heads": 2, "num_hidden_layers": LAYERS,
}


def _official_names(dim: int = 4, layers: int = 2) -> dict[str, torch.Tensor]:
    """An official-layout CLIP state dict (vision and text towers) with numbered tensors."""
    shapes = {
        "visual.patch_embedding.weight": (dim, 3, 2, 2),
        "visual.cls_embedding": (1, 1, dim),
        "visual.pos_embedding": (1, 5, dim),
        "visual.pre_norm.weight": (dim,),
        "visual.post_norm.bias": (dim,),
        "visual.head": (dim, 3),
        "textual.token_embedding.weight": (7, dim),
        "log_scale": (),
    }
    for index in range(layers):
        block = f"visual.transformer.{index}."
        shapes |= {block + "attn.to_qkv.weight": (3 * dim, dim), block + "attn.to_qkv.bias": (3 * dim,),
                   block + "attn.proj.weight": (dim, dim), block + "norm1.weight": (dim,),
                   block + "mlp.0.weight": (4 * dim, dim), block + "mlp.2.bias": (dim,)}
    return {name: torch.arange(float(torch.Size(shape).numel())).reshape(shape) for name, shape in shapes.items()}


def test_the_official_vision_tower_converts_without_its_last_block_head_or_text_tower():
    official = _official_names()
    ours = convert_visual_state_dict(official, num_layers=2)
    assert not [name for name in ours if "layers.1." in name or "text" in name]
    qkv = official["visual.transformer.0.attn.to_qkv.weight"]
    assert torch.equal(ours["encoder.layers.0.self_attn.q_proj.weight"], qkv[:4])
    assert torch.equal(ours["encoder.layers.0.self_attn.k_proj.weight"], qkv[4:8])
    qkv_bias = official["visual.transformer.0.attn.to_qkv.bias"]
    assert torch.equal(ours["encoder.layers.0.self_attn.v_proj.bias"], qkv_bias[8:])
    assert ours["embeddings.class_embedding"].shape == (4,)
    assert ours["embeddings.position_embedding.weight"].shape == (5, 4)
    assert torch.equal(ours["encoder.layers.0.mlp.fc1.weight"], official["visual.transformer.0.mlp.0.weight"])
    with pytest.raises(KeyError, match="visual.mystery"):
        convert_visual_state_dict({**official, "visual.mystery": torch.zeros(1)}, num_layers=2)


def test_the_encoder_gives_one_token_per_patch_and_a_class_token():
    torch.manual_seed(0)
    encoder = ImageEncoder(CLIPVisionModel(vision_config(TINY_TOWER)))
    assert encoder.model.config.num_hidden_layers == LAYERS - 1
    frames = torch.rand(2, 3, 40, 56) * 2 - 1
    tokens = encoder.encode(frames)
    assert tokens.shape == (2, (28 // 14) ** 2 + 1, HIDDEN)
    assert not torch.allclose(tokens[0], tokens[1])


@requires_infinitetalk
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:CUDA is not available:UserWarning")
def test_features_match_the_official_visual():
    torch.set_num_threads(1)
    frames = torch.rand(2, 3, 1, 40, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected, official = reference_clip_visual(TINY_CLIP, frames)
    encoder = ImageEncoder(CLIPVisionModel(vision_config(TINY_TOWER)))
    encoder.model.load_state_dict(convert_visual_state_dict(official, num_layers=LAYERS), strict=True)
    torch.testing.assert_close(encoder.encode(frames[:, :, 0]), expected, rtol=0, atol=1e-5)
    # the second-to-last block's output, not the last's: the whole tower differs
    whole = CLIPVisionModel(vision_config({**TINY_TOWER, "num_hidden_layers": LAYERS + 1}))
    whole.load_state_dict(convert_visual_state_dict(official, num_layers=LAYERS + 1), strict=True)
    assert not torch.allclose(ImageEncoder(whole).encode(frames[:, :, 0]), expected, atol=1e-3)
