"""Merging a LoRA written under the official Wan2.2-S2V module names into our transformer.

The files are written here by hand in the spellings peft produces; with WAN_REFERENCE_REPO set,
one is also written by peft itself over the official model and merged by peft for comparison.
"""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from model.wan_s2v.convert_transformer import convert_transformer_config, convert_transformer_state_dict
from model.wan_s2v.lora import LoraMergeSummary, merge_lora
from model.wan_s2v.transformer import WanS2VTransformer3DModel
from wan_reference import reference_module, requires_reference

TINY = {
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "ffn_dim": 40,
    "num_layers": 2,
    "freq_dim": 16,
    "text_dim": 20,
    "text_len": 8,
    "audio_dim": 12,
    "num_audio_layers": 3,
    "num_audio_tokens": 2,
    "audio_inject_layers": (0, 1),
}
RANK, ALPHA = 4, 3.0
FRAMES, HEIGHT, WIDTH = 1, 8, 8
AUDIO_FRAMES = 4  # -> ceil((4 + 73) / 4) - 19 = 1 latent frame

# The layers Live Avatar's peft config ("q,k,v,o,ffn.0,ffn.2") reaches, official name -> ours.
TARGETS = {
    **{f"blocks.{i}.{kind}.{official}": f"blocks.{i}.{kind}.{ours}.weight"
       for i in range(TINY["num_layers"]) for kind in ("self_attn", "cross_attn")
       for official, ours in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))},
    **{f"blocks.{i}.ffn.0": f"blocks.{i}.ffn.net.0.proj.weight" for i in range(TINY["num_layers"])},
    **{f"blocks.{i}.ffn.2": f"blocks.{i}.ffn.net.2.weight" for i in range(TINY["num_layers"])},
    **{f"audio_injector.injector.{i}.{official}": f"audio_injectors.{i}.attn.{ours}.weight"
       for i in range(len(TINY["audio_inject_layers"]))
       for official, ours in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))},
}


def tiny_transformer(dtype: torch.dtype = torch.float32) -> WanS2VTransformer3DModel:
    torch.manual_seed(0)
    model = WanS2VTransformer3DModel(**TINY).eval()
    with torch.no_grad():  # some layers start at zero; make every weight matter
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model if dtype == torch.float32 else model.to(dtype)


def random_pairs(model: WanS2VTransformer3DModel, seed: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{official module: (A, B)} for every target layer, shaped from our weights."""
    generator = torch.Generator().manual_seed(seed)
    parameters = dict(model.named_parameters())
    pairs = {}
    for official, ours in TARGETS.items():
        out_features, in_features = parameters[ours].shape
        pairs[official] = (torch.randn(RANK, in_features, generator=generator),
                           torch.randn(out_features, RANK, generator=generator) * 0.1)
    return pairs


def write_lora(path, pairs, prefix: str = "", adapter: str = "", extra: dict[str, torch.Tensor] | None = None):
    tensors = dict(extra or {})
    for module, (a, b) in pairs.items():
        tensors[f"{prefix}{module}.lora_A{adapter}.weight"] = a
        tensors[f"{prefix}{module}.lora_B{adapter}.weight"] = b
    save_file(tensors, str(path))
    return path


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "hidden_states": randn(1, 16, FRAMES, HEIGHT, WIDTH),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": randn(1, 5, TINY["text_dim"]),
        "ref_latents": randn(1, 16, 1, HEIGHT, WIDTH),
        "motion_latents": randn(1, 16, 19, HEIGHT, WIDTH),
        "audio_features": randn(1, TINY["num_audio_layers"], TINY["audio_dim"], AUDIO_FRAMES),
    }


def expected_merge(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (weight.float() + (b @ a) * (ALPHA / RANK)).to(weight.dtype)


@pytest.mark.parametrize(("prefix", "adapter"), [("", ""), ("base_model.model.", ".default"),
                                                  ("base_model.model.", ""), ("", ".default")])
def test_every_pair_becomes_w_plus_alpha_over_rank_b_a_and_nothing_else_changes(tmp_path, prefix, adapter):
    model = tiny_transformer()
    before = {name: param.clone() for name, param in model.named_parameters()}
    pairs = random_pairs(model)
    summary = merge_lora(model, write_lora(tmp_path / "lora.safetensors", pairs, prefix, adapter), ALPHA)
    assert summary == LoraMergeSummary(merged_layers=len(TARGETS), replaced_tensors=0, rank=RANK)
    merged = dict(model.named_parameters())
    for official, ours in TARGETS.items():
        assert torch.equal(merged[ours], expected_merge(before[ours], *pairs[official])), ours
    untouched = set(before) - set(TARGETS.values())
    assert untouched and all(torch.equal(merged[name], before[name]) for name in untouched)


def test_bfloat16_weights_are_merged_in_float32_and_rounded_once(tmp_path):
    model = tiny_transformer(torch.bfloat16)
    weight = model.blocks[1].ffn.net[0].proj.weight
    before = weight.clone()
    pairs = random_pairs(model)
    merge_lora(model, write_lora(tmp_path / "lora.safetensors", pairs), ALPHA)
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, expected_merge(before, *pairs["blocks.1.ffn.0"]))
    rounded_twice = before + ((pairs["blocks.1.ffn.0"][1] @ pairs["blocks.1.ffn.0"][0]) * (ALPHA / RANK)).bfloat16()
    assert not torch.equal(weight, rounded_twice)


def test_the_merge_changes_the_prediction_and_a_zero_b_does_not(tmp_path):
    model = tiny_transformer()
    with torch.no_grad():
        original = model(**inputs())
    zero_b = {module: (a, torch.zeros_like(b)) for module, (a, b) in random_pairs(model).items()}
    merge_lora(model, write_lora(tmp_path / "zero.safetensors", zero_b), ALPHA)
    with torch.no_grad():
        assert torch.equal(model(**inputs()), original)
    merge_lora(model, write_lora(tmp_path / "lora.safetensors", random_pairs(model)), ALPHA)
    with torch.no_grad():
        merged = model(**inputs())
    assert (merged - original).abs().mean() > 0.01 * original.abs().mean()


def test_full_tensors_replace_the_base_weights_before_the_pairs_are_merged(tmp_path, caplog):
    model = tiny_transformer()
    pairs = {"blocks.0.self_attn.q": random_pairs(model)["blocks.0.self_attn.q"]}
    new_q, new_norm = torch.randn(24, 24), torch.randn(24)
    extra = {
        # peft's name for the weight of a layer it wraps, and a plain parameter it does not wrap
        "base_model.model.blocks.0.self_attn.q.base_layer.weight": new_q,
        "base_model.model.blocks.1.norm3.weight": new_norm,
    }
    caplog.set_level(logging.INFO)
    summary = merge_lora(model, write_lora(tmp_path / "lora.safetensors", pairs, "base_model.model.", ".default", extra),
                         ALPHA)
    assert summary == LoraMergeSummary(merged_layers=1, replaced_tensors=2, rank=RANK)
    assert torch.equal(model.blocks[0].self_attn.to_q.weight, expected_merge(new_q, *pairs["blocks.0.self_attn.q"]))
    assert torch.equal(model.blocks[1].cross_attn_norm.weight, new_norm)
    assert "1 layers at rank 4" in caplog.text and "2 tensors replaced" in caplog.text


def _refused(tmp_path, tensors: dict[str, torch.Tensor], model=None) -> str:
    model = model or tiny_transformer()
    before = {name: param.clone() for name, param in model.named_parameters()}
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError) as raised:
        merge_lora(model, path, ALPHA)
    # the file is checked before anything is merged
    assert all(torch.equal(param, before[name]) for name, param in model.named_parameters())
    message = str(raised.value)
    assert str(path) in message
    return message


def _pair(module: str, rank: int = RANK) -> dict[str, torch.Tensor]:
    """A/B of a LoRA on a 24 x 24 layer."""
    return {f"{module}.lora_A.weight": torch.randn(rank, 24), f"{module}.lora_B.weight": torch.randn(24, rank)}


def test_a_key_of_no_parameter_is_refused_by_name(tmp_path):
    good = _pair("blocks.0.self_attn.q")
    message = _refused(tmp_path, {**good, **_pair("blocks.0.self_attn.qkv")})
    assert "blocks.0.self_attn.qkv.lora_A.weight" in message and "names no parameter" in message
    # an official name for a block this (two-block) model does not have
    message = _refused(tmp_path, {**good, **_pair("blocks.5.self_attn.q")})
    assert "blocks.5.self_attn.q.lora_A.weight" in message and "blocks.5.self_attn.to_q.weight" in message
    # another adapter name than peft's default is not taken for one
    message = _refused(tmp_path, {"blocks.0.self_attn.q.lora_A.other.weight": torch.randn(RANK, 24)})
    assert "blocks.0.self_attn.q.lora_A.other.weight" in message


def test_shapes_that_do_not_fit_are_refused_by_name(tmp_path):
    ffn_in = torch.randn(RANK, 24)
    message = _refused(tmp_path, {"blocks.1.ffn.2.lora_A.weight": ffn_in,  # ffn.2 takes 40 features, not 24
                                  "blocks.1.ffn.2.lora_B.weight": torch.randn(24, RANK)})
    assert "blocks.1.ffn.2.lora_A.weight" in message and "(4, 24)" in message and "(24, 40)" in message
    message = _refused(tmp_path, {"blocks.0.self_attn.k.lora_A.weight": torch.randn(RANK, 24),
                                  "blocks.0.self_attn.k.lora_B.weight": torch.randn(24, RANK + 1)})
    assert "blocks.0.self_attn.k.lora_A.weight" in message and "(24, 5)" in message
    message = _refused(tmp_path, {"blocks.0.norm3.weight": torch.randn(25)})
    assert "blocks.0.norm3.weight" in message and "(25,)" in message


def test_a_matrix_without_its_partner_or_another_rank_is_refused_by_name(tmp_path):
    message = _refused(tmp_path, {"base_model.model.blocks.0.cross_attn.v.lora_A.default.weight": torch.randn(RANK, 24)})
    assert "base_model.model.blocks.0.cross_attn.v.lora_A.default.weight" in message and "without its B" in message
    message = _refused(tmp_path, {"blocks.0.cross_attn.v.lora_B.weight": torch.randn(24, RANK)})
    assert "blocks.0.cross_attn.v.lora_B.weight" in message and "without its A" in message
    message = _refused(tmp_path, {**_pair("blocks.0.cross_attn.v"), **_pair("blocks.1.cross_attn.v", rank=8)})
    assert "blocks.1.cross_attn.v.lora_A.weight" in message and "rank 8" in message


def test_weights_that_are_not_loaded_are_refused_with_when_to_merge(tmp_path):
    model = tiny_transformer().to("meta")
    path = tmp_path / "lora.safetensors"
    save_file(_pair("blocks.0.self_attn.q"), str(path))
    with pytest.raises(ValueError, match="merge right after the weights are loaded") as raised:
        merge_lora(model, path, ALPHA)
    assert "blocks.0.self_attn.to_q.weight" in str(raised.value)


# Live Avatar's LoraConfig (liveavatar/configs/s2v_causal_sft.yaml), at toy rank.
PEFT_TARGETS = ["q", "k", "v", "o", "ffn.0", "ffn.2"]


@requires_reference
def test_our_merge_equals_peft_merge_and_unload_on_the_official_model(tmp_path):
    import peft
    from test_wan_transformer_reference import TINY_OFFICIAL_CONFIG

    model_s2v = reference_module("modules.s2v.model_s2v")
    torch.manual_seed(0)
    official = model_s2v.WanModel_S2V(**TINY_OFFICIAL_CONFIG).eval()
    with torch.no_grad():
        for param in official.parameters():
            param.normal_(0.0, 0.2)
    ours = WanS2VTransformer3DModel(**convert_transformer_config(TINY_OFFICIAL_CONFIG)).eval()
    ours.load_state_dict(convert_transformer_state_dict(official.state_dict()), strict=True)

    wrapped = peft.get_peft_model(official, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=PEFT_TARGETS))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # peft starts B at zero; a trained LoRA has both
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    # what the reference's checkpoint callback keeps: the trainable (LoRA) tensors, peft's names
    lora = {name: tensor.detach().clone() for name, tensor in wrapped.state_dict().items() if "lora_" in name}
    path = tmp_path / "liveavatar.safetensors"
    save_file(lora, str(path))
    expected = convert_transformer_state_dict(wrapped.merge_and_unload().state_dict())

    summary = merge_lora(ours, path, ALPHA)
    assert summary.merged_layers == len(lora) // 2
    assert any(key.startswith("base_model.model.audio_injector.injector.") for key in lora)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
