"""The Live Avatar LoRA attached beside our transformer's weights, applied only while active.

The files are written here by hand in the spellings peft produces; with WAN_REFERENCE_REPO set,
one is also written by peft itself over the official model and merged by peft for comparison.
The reference merges its LoRA into the weights; the adapter adds the update to the outputs, so
what is compared is outputs: the adapter's against a copy merged by hand (or by peft).
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from model.base import ModelUnavailableError
from model.wan_common.lora import LoraAdapter, LoraSummary
from model.wan_common.placement import store_blocks_in_fp8
from model.wan_s2v.convert_transformer import convert_transformer_config, convert_transformer_state_dict
from model.wan_s2v.lora import LIVE_AVATAR_EXPECTATION, LIVE_AVATAR_LORA, attach_live_avatar_lora, live_avatar_targets
from model.wan_s2v.memory import FP8_BLOCK_LAYERS
from model.wan_s2v.transformer import WanS2VTransformer3DModel
from tests.wan_reference import reference_module, requires_reference
from tests.wan_tiny_models import official_transformer_state_dict, tiny_live_avatar_lora

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


def inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    return {
        "hidden_states": randn(1, 16, FRAMES, HEIGHT, WIDTH),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": randn(1, 5, TINY["text_dim"]),
        "ref_latents": randn(1, 16, 1, HEIGHT, WIDTH),
        "motion_latents": randn(1, 16, 19, HEIGHT, WIDTH),
        "audio_features": randn(1, TINY["num_audio_layers"], TINY["audio_dim"], AUDIO_FRAMES),
    }


def forward(model: WanS2VTransformer3DModel, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(dtype=dtype))


def merged_copy(model: WanS2VTransformer3DModel, pairs) -> WanS2VTransformer3DModel:
    """A deep copy with W + (alpha / rank) * B @ A in its weights, added in float32 (or float64), rounded once."""
    merged = copy.deepcopy(model)
    parameters = dict(merged.named_parameters())
    with torch.no_grad():
        for official, (a, b) in pairs.items():
            weight = parameters[TARGETS[official]]
            exact = torch.promote_types(weight.dtype, torch.float32)
            weight.copy_(weight.to(exact) + (b.to(exact) @ a.to(exact)) * (ALPHA / RANK))
    return merged


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def lora_state(model: torch.nn.Module) -> tuple[int, list[str]]:
    """The forward hooks and the LoRA buffers on the model."""
    hooks = sum(len(module._forward_hooks) for module in model.modules())
    return hooks, [name for name, _ in model.named_buffers() if name.rpartition(".")[2].startswith("lora_")]


def linear(model: torch.nn.Module, parameter: str) -> torch.nn.Linear:
    return model.get_submodule(parameter.removesuffix(".weight"))


@pytest.mark.parametrize(("prefix", "adapter"), [("", ""), ("base_model.model.", ".default"),
                                                  ("base_model.model.", ""), ("", ".default")])
def test_each_linear_gives_w_plus_alpha_over_rank_b_a_only_while_active(tmp_path, prefix, adapter):
    model = tiny_transformer()
    before = {name: param.clone() for name, param in model.named_parameters()}
    state_keys = list(model.state_dict())
    pairs = random_pairs(model)
    generator = torch.Generator().manual_seed(5)
    probes = {ours: torch.randn(2, 3, linear(model, ours).in_features, generator=generator)
              for ours in TARGETS.values()}
    with torch.no_grad():
        base = {ours: linear(model, ours)(x) for ours, x in probes.items()}

    path = write_lora(tmp_path / "lora.safetensors", pairs, prefix, adapter)
    lora = LoraAdapter.attach(model, path, ALPHA, LIVE_AVATAR_LORA)
    assert lora.summary == LoraSummary(layers=len(TARGETS), rank=RANK, replaced_tensors=0)
    assert lora_state(model)[0] == len(TARGETS)
    assert list(model.state_dict()) == state_keys  # the buffers are not saved with the model

    def outputs() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {ours: linear(model, ours)(x) for ours, x in probes.items()}

    assert all(torch.equal(output, base[ours]) for ours, output in outputs().items())
    with lora.active():
        assert lora.is_active
        active = outputs()
    for official, ours in TARGETS.items():
        a, b = pairs[official]
        layer = linear(model, ours)
        expected = F.linear(probes[ours], before[ours] + (ALPHA / RANK) * b @ a, layer.bias)
        assert relative_error(active[ours], expected) < 1e-6, ours
        assert relative_error(active[ours], base[ours]) > 1e-2, ours
    assert not lora.is_active
    assert all(torch.equal(output, base[ours]) for ours, output in outputs().items())
    with pytest.raises(KeyError), lora.active():
        raise KeyError("a job failed")
    assert all(torch.equal(output, base[ours]) for ours, output in outputs().items())
    # the weights themselves were never touched
    assert all(torch.equal(param, before[name]) for name, param in model.named_parameters())


def test_the_active_transformer_equals_one_merged_by_hand_and_a_zero_b_changes_nothing(tmp_path):
    model = tiny_transformer()
    pairs = random_pairs(model)
    base = forward(model)
    merged = forward(merged_copy(model, pairs))

    zero_b = {module: (a, torch.zeros_like(b)) for module, (a, b) in pairs.items()}
    zero = LoraAdapter.attach(model, write_lora(tmp_path / "zero.safetensors", zero_b), ALPHA, LIVE_AVATAR_LORA)
    with zero.active():
        assert torch.equal(forward(model), base)
    zero.detach()

    lora = LoraAdapter.attach(model, write_lora(tmp_path / "lora.safetensors", pairs), ALPHA, LIVE_AVATAR_LORA)
    assert torch.equal(forward(model), base)
    with lora.active():
        active = forward(model)
    assert torch.equal(forward(model), base)
    print(f"adapter vs merged: relative error {relative_error(active, merged):.3g}")
    assert relative_error(active, merged) < 1e-5
    assert (merged - base).abs().mean() > 0.01 * base.abs().mean()


def test_a_generator_suspended_inside_active_restores_the_base_when_closed(tmp_path):
    model = tiny_transformer()
    base = forward(model)
    path = write_lora(tmp_path / "lora.safetensors", random_pairs(model))
    lora = LoraAdapter.attach(model, path, ALPHA, LIVE_AVATAR_LORA)

    def job():
        with lora.active():
            for _ in range(3):
                yield forward(model)

    chunks = job()
    first = next(chunks)
    assert lora.is_active and not torch.equal(first, base)
    with pytest.raises(RuntimeError, match="not re-entrant"), lora.active():
        pass
    assert lora.is_active  # the refused entry left the running job's LoRA on
    assert torch.equal(next(chunks), first)
    chunks.close()  # GeneratorExit inside active()
    assert not lora.is_active
    assert torch.equal(forward(model), base)


def test_full_tensors_replace_the_base_weights_only_while_active(tmp_path, caplog):
    model = tiny_transformer()
    q = model.blocks[0].self_attn.to_q
    base_q, base_norm = q.weight.clone(), model.blocks[1].cross_attn_norm.weight.clone()
    a, b = random_pairs(model)["blocks.0.self_attn.q"]
    new_q, new_norm = torch.randn(24, 24), torch.randn(24)
    extra = {
        # peft's name for the weight of a layer it wraps, and a plain parameter it does not wrap
        "base_model.model.blocks.0.self_attn.q.base_layer.weight": new_q,
        "base_model.model.blocks.1.norm3.weight": new_norm,
    }
    caplog.set_level(logging.INFO)
    path = write_lora(tmp_path / "lora.safetensors", {"blocks.0.self_attn.q": (a, b)}, "base_model.model.", ".default",
                      extra)
    lora = LoraAdapter.attach(model, path, ALPHA, LIVE_AVATAR_LORA)
    assert lora.summary == LoraSummary(layers=1, rank=RANK, replaced_tensors=2)
    assert "1 layers at rank 4" in caplog.text and "2 tensors replaced" in caplog.text
    x = torch.randn(3, 24)
    base_output = q(x).detach()
    with torch.no_grad(), lora.active():
        # replaced first, then the pair on top, as the reference loads and then merges
        assert torch.equal(q.weight, new_q) and torch.equal(model.blocks[1].cross_attn_norm.weight, new_norm)
        assert relative_error(q(x), F.linear(x, new_q + (ALPHA / RANK) * b @ a, q.bias)) < 1e-6
    assert torch.equal(q.weight, base_q) and torch.equal(model.blocks[1].cross_attn_norm.weight, base_norm)
    assert torch.equal(q(x), base_output)
    with pytest.raises(ValueError), lora.active():
        raise ValueError("a job failed")
    assert torch.equal(q.weight, base_q) and torch.equal(model.blocks[1].cross_attn_norm.weight, base_norm)


def test_bfloat16_buffers_give_the_bfloat16_merged_output(tmp_path):
    reference_model = tiny_transformer()
    pairs = random_pairs(reference_model)
    exact = forward(merged_copy(reference_model, pairs))  # float32
    model = tiny_transformer(torch.bfloat16)
    merged = forward(merged_copy(model, pairs), torch.bfloat16)
    lora = LoraAdapter.attach(model, write_lora(tmp_path / "lora.safetensors", pairs), ALPHA, LIVE_AVATAR_LORA)
    layer = model.blocks[1].ffn.net[0].proj
    assert layer.lora_down.dtype == layer.lora_up.dtype == torch.bfloat16
    with lora.active():
        active = forward(model, torch.bfloat16)
    adapter_error, merged_error = relative_error(active, exact), relative_error(merged, exact)
    print(f"bf16 vs float32 merged: adapter {adapter_error:.3g}, merged bf16 model {merged_error:.3g}, "
          f"adapter vs merged bf16 {relative_error(active, merged):.3g}")
    assert relative_error(active, merged) < 0.05
    assert adapter_error < 2 * merged_error


def test_the_buffers_follow_the_transformer_when_it_is_moved_or_cast(tmp_path):
    model = tiny_transformer()
    pairs = random_pairs(model)
    lora = LoraAdapter.attach(model, write_lora(tmp_path / "lora.safetensors", pairs), ALPHA, LIVE_AVATAR_LORA)
    # as `.to(gpu)` moves them; plain attributes would stay float32 and the float64 matmul would fail
    model.to(torch.float64)
    assert {buffer.dtype for name, buffer in model.named_buffers() if "lora_" in name} == {torch.float64}
    merged = merged_copy(model, pairs)
    with lora.active():
        active = forward(model, torch.float64)
    assert relative_error(active, forward(merged, torch.float64)) < 1e-5


def test_the_adapter_runs_under_the_fp8_mode_and_group_offloading_when_attached_first(tmp_path):
    pairs = random_pairs(tiny_transformer())
    path = write_lora(tmp_path / "lora.safetensors", pairs)
    exact_base = forward(tiny_transformer())
    exact = forward(merged_copy(tiny_transformer(), pairs))

    # fp8: the blocks' linear weights become float8 copies expanded per block run; the hook reads
    # only its buffers. The update is then exact, so the error is the base weights' quantisation.
    fp8 = tiny_transformer()
    lora = LoraAdapter.attach(fp8, path, ALPHA, LIVE_AVATAR_LORA)
    store_blocks_in_fp8(fp8, torch.device("cpu"), FP8_BLOCK_LAYERS)
    base_error = relative_error(forward(fp8), exact_base)
    with lora.active():
        active_error = relative_error(forward(fp8), exact)
    print(f"fp8 vs float32: base {base_error:.3g}, with the LoRA active {active_error:.3g}")
    assert active_error < 2 * base_error < 0.2
    quantised = tiny_transformer()
    store_blocks_in_fp8(quantised, torch.device("cpu"), FP8_BLOCK_LAYERS)
    with pytest.raises(ValueError, match="attach right after the weights are loaded"):
        LoraAdapter.attach(quantised, path, ALPHA, LIVE_AVATAR_LORA)
    assert lora_state(quantised)[1] == []

    offloaded = tiny_transformer()
    lora = LoraAdapter.attach(offloaded, path, ALPHA, LIVE_AVATAR_LORA)
    offloaded.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    assert torch.equal(forward(offloaded), exact_base)
    with lora.active():
        assert relative_error(forward(offloaded), exact) < 1e-5
    assert torch.equal(forward(offloaded), exact_base)
    late = tiny_transformer()
    late.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    with pytest.raises(ValueError, match="already offloaded"):
        LoraAdapter.attach(late, path, ALPHA, LIVE_AVATAR_LORA)
    assert lora_state(late)[1] == []


def test_a_replacement_that_a_memory_mode_took_over_is_refused_when_activated(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"blocks.0.self_attn.q.base_layer.weight": torch.randn(24, 24)}, str(path))
    quantised, offloaded = tiny_transformer(), tiny_transformer()
    fp8 = LoraAdapter.attach(quantised, path, ALPHA, LIVE_AVATAR_LORA)
    grouped = LoraAdapter.attach(offloaded, path, ALPHA, LIVE_AVATAR_LORA)
    store_blocks_in_fp8(quantised, torch.device("cpu"), FP8_BLOCK_LAYERS)
    offloaded.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    for model, lora in ((quantised, fp8), (offloaded, grouped)):
        base = forward(model)
        with pytest.raises(RuntimeError, match="blocks.0.self_attn.to_q.weight.*cannot be swapped"), lora.active():
            pass
        assert not lora.is_active and torch.equal(forward(model), base)


def test_detach_removes_every_hook_and_buffer(tmp_path):
    model = tiny_transformer()
    base = forward(model)
    clean = lora_state(model)
    replacement = {"blocks.1.norm3.weight": torch.randn(24)}
    path = write_lora(tmp_path / "lora.safetensors", random_pairs(model), extra=replacement)
    lora = LoraAdapter.attach(model, path, ALPHA, LIVE_AVATAR_LORA)
    assert lora_state(model) != clean
    with pytest.raises(ValueError, match="already has a LoRA attached"):
        LoraAdapter.attach(model, path, ALPHA, LIVE_AVATAR_LORA)
    with lora.active(), pytest.raises(RuntimeError, match="while it is active"):
        lora.detach()
    lora.detach()
    assert lora_state(model) == clean
    assert torch.equal(forward(model), base)
    with pytest.raises(RuntimeError, match="detached"), lora.active():
        pass
    LoraAdapter.attach(model, path, ALPHA, LIVE_AVATAR_LORA)  # a detached model takes a LoRA again


def test_an_attach_that_fails_while_reading_leaves_no_hooks_or_buffers(tmp_path, monkeypatch):
    model = tiny_transformer()
    clean = lora_state(model)
    replacement = {"blocks.1.norm3.weight": torch.randn(24)}
    path = write_lora(tmp_path / "lora.safetensors", random_pairs(model), extra=replacement)

    def unreadable(*args):  # the pairs are attached by now; the replacement is read last
        raise OSError("read error")

    monkeypatch.setattr(LoraAdapter, "_keep_replacement", unreadable)
    with pytest.raises(OSError):
        LoraAdapter.attach(model, path, ALPHA, LIVE_AVATAR_LORA)
    assert lora_state(model) == clean


def _refused(tmp_path, tensors: dict[str, torch.Tensor], model=None) -> str:
    model = model or tiny_transformer()
    before = {name: param.clone() for name, param in model.named_parameters()}
    clean = lora_state(model)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError) as raised:
        LoraAdapter.attach(model, path, ALPHA, LIVE_AVATAR_LORA)
    # the file is checked before anything is attached
    assert lora_state(model) == clean
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
    # a pair whose shapes fit a weight that is not a linear layer's (the token type embedding, 3 x 24)
    message = _refused(tmp_path, {**good, "trainable_cond_mask.lora_A.weight": torch.randn(RANK, 24),
                                  "trainable_cond_mask.lora_B.weight": torch.randn(3, RANK)})
    assert "trainable_cond_mask.lora_A.weight" in message and "not the weight of a linear layer" in message


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
    lone_a = "base_model.model.blocks.0.cross_attn.v.lora_A.default.weight"
    message = _refused(tmp_path, {lone_a: torch.randn(RANK, 24)})
    assert "base_model.model.blocks.0.cross_attn.v.lora_A.default.weight" in message and "without its B" in message
    message = _refused(tmp_path, {"blocks.0.cross_attn.v.lora_B.weight": torch.randn(24, RANK)})
    assert "blocks.0.cross_attn.v.lora_B.weight" in message and "without its A" in message
    message = _refused(tmp_path, {**_pair("blocks.0.cross_attn.v"), **_pair("blocks.1.cross_attn.v", rank=8)})
    assert "blocks.1.cross_attn.v.lora_A.weight" in message and "rank 8" in message


def test_weights_that_are_not_loaded_are_refused_with_when_to_attach(tmp_path):
    model = tiny_transformer().to("meta")
    path = tmp_path / "lora.safetensors"
    save_file(_pair("blocks.0.self_attn.q"), str(path))
    with pytest.raises(ValueError, match="attach right after the weights are loaded") as raised:
        LoraAdapter.attach(model, path, ALPHA, LIVE_AVATAR_LORA)
    assert "blocks.0.self_attn.to_q.weight" in str(raised.value)
    assert lora_state(model)[1] == []


def test_the_overhead_figures_of_the_module_docstring_are_those_of_the_14b_model():
    """lora.py states 676,331,520 A/B values at rank 128 and +4.3% linear work per video token."""
    rank = 128
    with torch.device("meta"):
        full = WanS2VTransformer3DModel()
    suffixes = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ffn.net.0.proj", "ffn.net.2")
    targets = {name: module for name, module in full.named_modules()
               if name.startswith(("blocks.", "audio_injectors.")) and name.endswith(suffixes)}
    assert len(targets) == 40 * 10 + 12 * 4
    assert all(isinstance(layer, torch.nn.Linear) for layer in targets.values())
    assert sum(rank * (layer.in_features + layer.out_features) for layer in targets.values()) == 676_331_520
    # every video token passes all of them but the keys and values of text and audio
    on_video = [layer for name, layer in targets.items()
                if name.startswith("blocks.") and ".self_attn." in name or not name.endswith(("to_k", "to_v"))]
    assert len(on_video) == 40 * 8 + 12 * 2
    base = sum(layer.in_features * layer.out_features for layer in on_video)
    update = sum(rank * (layer.in_features + layer.out_features) for layer in on_video)
    assert (round(2 * update / 1e9, 2), round(2 * base / 1e9, 1), round(100 * update / base, 1)) == (1.08, 25.2, 4.3)


# Live Avatar's LoraConfig (liveavatar/configs/s2v_causal_sft.yaml), at toy rank.
PEFT_TARGETS = ["q", "k", "v", "o", "ffn.0", "ffn.2"]


@requires_reference
def test_our_adapter_gives_the_outputs_of_peft_merge_and_unload_on_the_official_model(tmp_path):
    import peft

    from tests.test_wan_transformer_reference import MOTION_FRAMES, TINY_OFFICIAL_CONFIG, _inputs, _randomise

    model_s2v = reference_module("modules.s2v.model_s2v")
    torch.manual_seed(0)
    official = model_s2v.WanModel_S2V(**TINY_OFFICIAL_CONFIG).eval()
    _randomise(official, torch.Generator().manual_seed(1))
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
    merged = wrapped.merge_and_unload()
    assert any(key.startswith("base_model.model.audio_injector.injector.") for key in lora)

    x = _inputs(seed=0)
    with torch.no_grad():
        expected = merged(x["latents"], t=x["timestep"], context=list(x["text"]), seq_len=None,
                          ref_latents=x["ref_latents"], motion_latents=x["motion_latents"],
                          cond_states=torch.zeros_like(x["latents"]), audio_input=x["audio"],
                          motion_frames=list(MOTION_FRAMES), drop_motion_frames=False)[0]

        def ours_forward() -> torch.Tensor:
            return ours(x["latents"], x["timestep"], x["text"], x["ref_latents"], x["motion_latents"], x["audio"],
                        motion_frames=MOTION_FRAMES, drop_motion_frames=False)[0]

        base = ours_forward()
        adapter = LoraAdapter.attach(ours, path, ALPHA, LIVE_AVATAR_LORA)
        assert adapter.summary.layers == len(lora) // 2
        with adapter.active():
            actual = ours_forward()
    error = relative_error(actual, expected)
    print(f"adapter vs peft merge_and_unload: relative error {error:.3g}")
    assert error < 1e-5
    assert relative_error(base, expected) > 1e-2


# --- the Live Avatar file checked against what its reference loads (model/wan_s2v/lora.py) --------

# the production expectation at the toy rank of these files
TINY_EXPECTATION = dataclasses.replace(LIVE_AVATAR_EXPECTATION, rank=RANK)
FIX = "Replace it with liveavatar.safetensors of Quark-Vision/Live-Avatar"


def live_avatar_file(model: WanS2VTransformer3DModel, **options) -> dict[str, torch.Tensor]:
    return tiny_live_avatar_lora(official_transformer_state_dict(model), rank=RANK, **options)


def test_the_expected_layers_are_those_peft_reaches_and_every_one_is_a_linear_layer_of_ours():
    model = tiny_transformer()
    targets = live_avatar_targets(model)
    # the test's own list (TARGETS, from the peft config's suffixes), in the same order as modules
    assert set(targets) == set(TARGETS) and len(targets) == len(TARGETS)
    for official in targets:
        ours = LIVE_AVATAR_LORA.to_parameter(f"{official}.weight")
        assert isinstance(linear(model, ours), torch.nn.Linear), official
    with torch.device("meta"):
        full = WanS2VTransformer3DModel()
    assert len(live_avatar_targets(full)) == 40 * 10 + 12 * 4  # the 14B model, as lora.py's figures count
    assert LIVE_AVATAR_EXPECTATION.rank == 128 and LIVE_AVATAR_EXPECTATION.adapter_name == "default"


@pytest.mark.parametrize("prefix", ["", "base_model.model."])
def test_a_file_in_peft_spelling_with_every_layer_at_the_rank_passes_and_attaches(tmp_path, prefix):
    model = tiny_transformer()
    path = tmp_path / "liveavatar.safetensors"
    save_file(live_avatar_file(model, prefix=prefix), str(path))
    assert TINY_EXPECTATION.problems(path, model, LIVE_AVATAR_LORA) == []
    lora = attach_live_avatar_lora(model, path, TINY_EXPECTATION)
    assert isinstance(lora, LoraAdapter) and lora.summary.layers == len(TARGETS)
    # peft's names for the weights of layers it wraps, and of one it does not, load in the reference too
    extra = {f"{prefix}blocks.0.self_attn.q.base_layer.weight": torch.randn(24, 24),
             f"{prefix}blocks.1.norm3.weight": torch.randn(24)}
    save_file({**live_avatar_file(model, prefix=prefix), **extra}, str(path))
    assert TINY_EXPECTATION.problems(path, model, LIVE_AVATAR_LORA) == []


def _without(tensors: dict[str, torch.Tensor], *fragments: str) -> dict[str, torch.Tensor]:
    return {key: value for key, value in tensors.items() if not any(fragment in key for fragment in fragments)}


def _renamed(tensors: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    return {key.replace(old, new): value for key, value in tensors.items()}


# each: how the file is made from the good one, and what the refusal must name
BAD_FILES = {
    "a targeted layer missing": (
        lambda good: _without(good, "blocks.1.self_attn.q."),
        ["blocks.1.self_attn.q: no lora_A/lora_B"],
    ),
    "a matrix without its partner": (
        lambda good: _without(good, "blocks.0.ffn.2.lora_B"),
        ["blocks.0.ffn.2: lora_A without lora_B"],
    ),
    "another rank": (
        lambda good: {key: (value[:2] if ".lora_A." in key else value[:, :2]).contiguous()
                      for key, value in good.items()},
        ["blocks.0.self_attn.q, blocks.0.self_attn.k, blocks.0.self_attn.v and 25 more: rank 2 where 4 is expected"],
    ),
    "keys without peft's adapter name": (
        lambda good: _renamed(good, ".default.weight", ".weight"),
        ["LoRA keys the reference does not load, which it spells ...lora_A.default.weight: "
         "audio_injector.injector.0.k.lora_A.weight, audio_injector.injector.0.k.lora_B.weight, "
         "audio_injector.injector.0.o.lora_A.weight and 53 more", "and 25 more: no lora_A/lora_B"],
    ),
    "a pair for a layer peft does not target": (
        lambda good: {**good, "text_embedding.0.lora_A.default.weight": torch.randn(RANK, 20),
                      "text_embedding.0.lora_B.default.weight": torch.randn(24, RANK)},
        ["LoRA keys of layers the LoRA does not target: text_embedding.0.lora_A.default.weight, "
         "text_embedding.0.lora_B.default.weight"],
    ),
    "a wrapped layer's weight under its plain name": (
        lambda good: {**good, "blocks.0.self_attn.q.weight": torch.randn(24, 24)},
        ["unexpected key blocks.0.self_attn.q.weight (peft names the wrapped layer's weight "
         "blocks.0.self_attn.q.base_layer.weight)"],
    ),
    "a key of no parameter": (
        lambda good: {**good, "blocks.0.self_attn.qkv.weight": torch.randn(24, 24)},
        ["unexpected key blocks.0.self_attn.qkv.weight (names no parameter of the official Wan2.2-S2V-14B"],
    ),
    "the model prefix on some keys only": (
        lambda good: {("base_model.model." + key if "blocks.0." in key else key): value for key, value in good.items()},
        ["keys carry peft's model prefix 'base_model.model.' and the others not"],
    ),
    "a shape that does not fit the transformer": (
        lambda good: {**good, "blocks.0.ffn.2.lora_A.default.weight": torch.randn(RANK, 24)},
        ["blocks.0.ffn.2.lora_A.default.weight and blocks.0.ffn.2.lora_B.default.weight have shapes (4, 24)"],
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_file_that_is_not_live_avatars_leaves_the_fast_mode_unavailable_naming_what_differs(tmp_path, kind):
    model = tiny_transformer()
    clean = lora_state(model)
    make, named = BAD_FILES[kind]
    path = tmp_path / "liveavatar.safetensors"
    save_file(make(live_avatar_file(model)), str(path))
    refusal = attach_live_avatar_lora(model, path, TINY_EXPECTATION)
    assert isinstance(refusal, ModelUnavailableError), kind
    message = str(refusal)
    assert message.startswith(f"the Live Avatar LoRA of the fast mode at {path} is not the one Live Avatar publishes")
    assert all(part in message for part in named), message
    assert FIX in message and "quality jobs are unaffected" in message
    assert lora_state(model) == clean  # nothing attached


def test_a_file_that_is_not_safetensors_leaves_the_fast_mode_unavailable(tmp_path):
    model = tiny_transformer()
    path = tmp_path / "liveavatar.safetensors"
    path.write_bytes(b"<html>rate limited</html>" * 10)  # what a proxy may leave instead
    refusal = attach_live_avatar_lora(model, path, TINY_EXPECTATION)
    assert isinstance(refusal, ModelUnavailableError)
    assert "it is not a readable safetensors file (SafetensorError" in str(refusal) and FIX in str(refusal)
    truncated = tmp_path / "truncated.safetensors"  # a download cut short
    save_file(live_avatar_file(model), str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    assert "file not fully covered" in str(attach_live_avatar_lora(model, truncated, TINY_EXPECTATION))
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    assert "the file holds no tensors" in str(attach_live_avatar_lora(model, empty, TINY_EXPECTATION))


def test_the_production_expectation_refuses_a_file_of_the_toy_rank(tmp_path):
    model = tiny_transformer()
    path = tmp_path / "liveavatar.safetensors"
    save_file(live_avatar_file(model), str(path))
    refusal = attach_live_avatar_lora(model, path)
    assert isinstance(refusal, ModelUnavailableError) and "rank 4 where 128 is expected" in str(refusal)
