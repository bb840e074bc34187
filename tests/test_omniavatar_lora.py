"""OmniAvatar's LoRA merge against the reference's peft-wrapped model (`add_lora_to_model`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.omniavatar import config
from model.omniavatar.lora import merge_lora_
from model.omniavatar.transformer import OmniAvatarTransformer3DModel
from tests.omniavatar_reference import (
    reference_add_lora,
    reference_prediction,
    reference_transformer,
    requires_omniavatar,
)
from tests.omniavatar_tiny_models import (
    TINY_TRANSFORMER,
    our_prediction,
    our_transformer,
    our_transformer_arguments,
    transformer_inputs,
)

# the published config.json's LoRA settings at a toy rank (alpha / rank as published)
RANK = 4
LORA_SETTINGS = {
    "lora_rank": RANK,
    "lora_alpha": RANK * config.LORA_ALPHA / config.LORA_RANK,
    "lora_target_modules": ",".join(config.LORA_TARGETS),
    "init_lora_weights": "kaiming",
}


def _published_file(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A `pytorch_model.pt` as training saves it: the trained tensors of the peft-wrapped model
    (every LoRA pair, the patch embedding, the audio modules), all non-zero."""
    wrapped = reference_transformer(TINY_TRANSFORMER, seed=5)
    reference_add_lora(wrapped, LORA_SETTINGS, None)
    generator = torch.Generator().manual_seed(6)
    trained = {
        key: 0.2 * torch.randn(value.shape, generator=generator)
        for key, value in wrapped.state_dict().items()
        if "lora_" in key or key.startswith(("patch_embedding.", "audio_proj.", "audio_cond_projs."))
    }
    path = folder / "pytorch_model.pt"
    torch.save(trained, path)
    return path, trained


@requires_omniavatar
def test_merged_prediction_is_the_wrapped_reference_one(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    path, trained = _published_file(tmp_path)
    reference = reference_transformer(TINY_TRANSFORMER)
    ours = our_transformer(reference.state_dict())
    before = our_prediction(ours, transformer_inputs())
    reference_add_lora(reference, LORA_SETTINGS, path)
    summary = merge_lora_(ours, torch.load(path, weights_only=True), LORA_SETTINGS["lora_alpha"])

    layers = TINY_TRANSFORMER["num_layers"] * 8  # q, k, v, o of both attentions
    assert summary.merged_layers == layers + 2 * TINY_TRANSFORMER["num_layers"]  # and the two FFN linears
    assert summary.rank == RANK
    assert summary.replaced_tensors == len([key for key in trained if "lora_" not in key])
    inputs = transformer_inputs()
    found = our_prediction(ours, inputs)
    torch.testing.assert_close(found, reference_prediction(reference, inputs), rtol=1e-4, atol=1e-5)
    assert (found - before).abs().max() > 1e-3


def _tiny() -> OmniAvatarTransformer3DModel:
    return OmniAvatarTransformer3DModel(**our_transformer_arguments(TINY_TRANSFORMER), audio_feature_dim=16)


def _trained_parts(model: OmniAvatarTransformer3DModel) -> dict[str, torch.Tensor]:
    """The tensors every OmniAvatar file holds besides the LoRA, under the reference's names."""
    names = {
        "patch_embedding.weight": model.patch_embedding.weight, "patch_embedding.bias": model.patch_embedding.bias,
        "audio_proj.proj.weight": model.audio_injection.pack.proj.weight,
        "audio_proj.proj.bias": model.audio_injection.pack.proj.bias,
        "audio_proj.norm_out.weight": model.audio_injection.pack.norm.weight,
        "audio_proj.norm_out.bias": model.audio_injection.pack.norm.bias,
    }
    for index, projection in enumerate(model.audio_injection.block_projections):
        names[f"audio_cond_projs.{index}.weight"] = projection.weight
        names[f"audio_cond_projs.{index}.bias"] = projection.bias
    return {name: torch.full_like(value, 0.5) for name, value in names.items()}


def test_files_the_reference_would_half_load_are_refused_untouched() -> None:
    model = _tiny()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    dim = TINY_TRANSFORMER["dim"]
    good = {
        **_trained_parts(model),
        "blocks.0.self_attn.q.lora_A.default.weight": torch.ones(2, dim),
        "blocks.0.self_attn.q.lora_B.default.weight": torch.ones(dim, 2),
    }
    bad_files = {
        "lora_A.default": {**good, "blocks.0.self_attn.k.lora_A.weight": torch.ones(2, dim)},
        "not a LoRA target": {
            **good, "blocks.0.norm3.lora_A.default.weight": torch.ones(2, dim),
            "blocks.0.norm3.lora_B.default.weight": torch.ones(dim, 2),
        },
        "without its other half": {**good, "blocks.1.ffn.0.lora_A.default.weight": torch.ones(2, dim)},
        "do not fit": {**good, "blocks.1.self_attn.o.lora_A.default.weight": torch.ones(2, dim + 1),
                       "blocks.1.self_attn.o.lora_B.default.weight": torch.ones(dim, 2)},
        "shape": {**good, "audio_proj.proj.weight": torch.ones(3, 3)},
        "I2V": {**good, "blocks.0.cross_attn.k_img.weight": torch.ones(dim, dim)},
        "lacks 2 tensors only it can give": {
            key: value for key, value in good.items() if not key.startswith("audio_cond_projs.1.")
        },
    }
    for message, published in bad_files.items():
        with pytest.raises(ValueError, match=message):
            merge_lora_(model, published, alpha=1.0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_base_layer_weights_are_replaced_before_the_merge() -> None:
    model = _tiny()
    dim = TINY_TRANSFORMER["dim"]
    down, up = torch.randn(3, dim), torch.randn(dim, 3)
    base = torch.randn(dim, dim)
    merge_lora_(model, {
        **_trained_parts(model),
        "blocks.2.cross_attn.v.base_layer.weight": base,
        "blocks.2.cross_attn.v.lora_A.default.weight": down,
        "blocks.2.cross_attn.v.lora_B.default.weight": up,
    }, alpha=6.0)
    torch.testing.assert_close(model.blocks[2].attn2.to_v.weight.detach(), base + 2.0 * up @ down)
    assert bool((model.audio_injection.block_projections[1].bias == 0.5).all())
