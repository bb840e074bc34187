"""Memory modes: which one is chosen, what an out-of-memory error says, and that fp8 storage and
group offloading still compute the transformer's function (on tiny models, on the CPU)."""

from __future__ import annotations

import pytest
import torch

from model.wan_common.memory import (
    GIB,
    MEMORY_MODE_SETTING,
    MemoryMode,
    MemoryModeError,
    choose_memory_mode,
    out_of_memory_message,
)
from model.wan_common.placement import (
    place_transformer,
    store_blocks_in_fp8,
    text_encoder_compute_device,
    text_encoder_home,
)
from model.wan_s2v import declaration
from model.wan_s2v.memory import FP8_BLOCK_LAYERS, MIN_FREE_BYTES
from tests.test_wan_pipeline import tiny_transformer


@pytest.mark.parametrize(
    "free_gib, expected", [(79, "full"), (66, "full"), (45, "fp8"), (38, "fp8"), (23, "offload"), (2, "offload")]
)
def test_the_largest_mode_that_fits_the_free_memory_is_chosen(free_gib, expected):
    assert choose_memory_mode(free_gib * GIB, None, MIN_FREE_BYTES) is MemoryMode(expected)


def test_wan_memory_mode_overrides_the_choice():
    assert choose_memory_mode(79 * GIB, " Offload ", MIN_FREE_BYTES) is MemoryMode.OFFLOAD
    assert choose_memory_mode(2 * GIB, "full", MIN_FREE_BYTES) is MemoryMode.FULL
    refusal = "WAN_MEMORY_MODE='tiny' is not a memory mode; use one of full, fp8, offload"
    with pytest.raises(MemoryModeError, match=refusal):
        choose_memory_mode(79 * GIB, "tiny", MIN_FREE_BYTES)


def test_the_declared_modes_are_the_memory_modes_from_the_most_memory_to_the_least():
    """The deploy tool reads wan-s2v's modes and their GPU sizes from its declaration, the worker
    from MemoryMode: the same names, in the same order, under the same setting."""
    assert tuple(declaration.MEMORY_MODE_GPU_GB) == tuple(MemoryMode)
    sizes = list(declaration.MEMORY_MODE_GPU_GB.values())
    assert sizes == sorted(sizes, reverse=True)
    assert declaration.MEMORY_MODE_SETTING == MEMORY_MODE_SETTING
    assert set(MIN_FREE_BYTES) == set(MemoryMode)


def test_out_of_memory_names_the_mode_and_the_next_smaller_one():
    assert "memory mode 'full'" in out_of_memory_message(MemoryMode.FULL)
    assert "WAN_MEMORY_MODE=fp8" in out_of_memory_message(MemoryMode.FULL)
    assert "WAN_MEMORY_MODE=offload" in out_of_memory_message(MemoryMode.FP8)
    assert "it is the smallest one" in out_of_memory_message(MemoryMode.OFFLOAD)


def transformer_inputs(model, batch: int = 2) -> dict:
    generator = torch.Generator().manual_seed(0)
    config = model.config

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return dict(
        hidden_states=randn(batch, config.in_channels, 20, 8, 8),
        timestep=torch.tensor([700.0] * batch),
        encoder_hidden_states=randn(batch, config.text_len, config.text_dim),
        ref_latents=randn(batch, config.in_channels, 1, 8, 8),
        motion_latents=randn(batch, config.in_channels, 19, 8, 8),
        audio_features=randn(batch, config.num_audio_layers, config.audio_dim, 80),
    )


def block_weight_bytes(model) -> int:
    return sum(tensor.nbytes for tensor in list(model.blocks.parameters()) + list(model.blocks.buffers()))


def block_linears(model) -> list[torch.nn.Linear]:
    return [module for module in model.blocks.modules() if isinstance(module, torch.nn.Linear)]


def round_to_fp8_rows(weight: torch.Tensor) -> torch.Tensor:
    """`weight` on the grid the fp8 mode stores: e4m3 values times a float32 scale per row."""
    scale = weight.float().abs().amax(dim=1, keepdim=True) / torch.finfo(torch.float8_e4m3fn).max
    return ((weight.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(weight.dtype)


@torch.no_grad()
def test_fp8_storage_halves_the_blocks_and_keeps_the_output():
    reference = tiny_transformer().to(torch.bfloat16)
    inputs = transformer_inputs(reference)
    expected = reference(**inputs)
    before = block_weight_bytes(reference)

    model = tiny_transformer().to(torch.bfloat16)
    place_transformer(model, MemoryMode.FP8, torch.device("cpu"), FP8_BLOCK_LAYERS)
    assert block_weight_bytes(model) < 0.65 * before  # float8 + a float32 scale per (24-wide) row vs bf16
    output = model(**inputs)
    assert model.blocks[0].self_attn.to_q.weight.numel() == 0  # no bf16 copy kept after the block ran
    # e4m3's 3 mantissa bits put the block weights 2.4% (RMS, relative) off; the output moves
    # less, 1.1% here (1.0-1.7% over seeds 0-4), as independent roundings partly cancel. Above
    # 3%, more than the weights' own error, something amplifies it: a bad scale or a wrong layer.
    error = (output - expected).norm() / expected.norm()
    assert 0.002 < error < 0.03, error


@torch.no_grad()
def test_fp8_stores_every_block_linear_in_float8_with_a_float32_scale_per_row():
    model = tiny_transformer().to(torch.bfloat16)
    originals = {linear: linear.weight.clone() for linear in block_linears(model)}
    store_blocks_in_fp8(model, torch.device("cpu"), FP8_BLOCK_LAYERS)
    # self and cross attention (q, k, v, out) and the feed-forward's two, in each of the 2 blocks
    assert len(originals) == 2 * (4 + 4 + 2)
    for linear, original in originals.items():
        assert linear.weight_fp8.dtype == torch.float8_e4m3fn and linear.weight_fp8.shape == original.shape
        assert linear.weight_scale.dtype == torch.float32 and linear.weight_scale.shape == (original.shape[0], 1)
        expanded = linear.weight_fp8.float() * linear.weight_scale
        torch.testing.assert_close(expanded, round_to_fp8_rows(original.float()), rtol=0, atol=0)


@torch.no_grad()
def test_fp8_leaves_the_audio_injectors_and_all_but_the_block_linears_as_they_were():
    model = tiny_transformer().to(torch.bfloat16)
    model.audio_injectors[1].float()  # a float32 injector must stay float32 too
    linears = set(block_linears(model))
    quantised = {f"{name}.weight" for name, module in model.named_modules() if module in linears}
    kept = {name: tensor.clone() for name, tensor in model.state_dict().items() if name not in quantised}
    assert any(name.startswith("audio_injectors.0.norm.linear") for name in kept)  # the adaptive norm's

    store_blocks_in_fp8(model, torch.device("cpu"), FP8_BLOCK_LAYERS)
    model(**transformer_inputs(model))
    state = model.state_dict()
    for name, before in kept.items():
        assert state[name].dtype == before.dtype and torch.equal(state[name], before), name
    outside_blocks = [module for name, module in model.named_modules() if not name.startswith("blocks")]
    assert not any(hasattr(module, "weight_fp8") for module in outside_blocks)


@torch.no_grad()
def test_fp8_blocks_compute_exactly_with_their_rounded_weights_and_nothing_else_rounded():
    """In float32, the fp8 model is the original with only the block linears moved onto the fp8
    grid, bit for bit: any other layer quantised (an injector, a modulation) changes the output."""
    inputs = transformer_inputs(tiny_transformer())
    rounded = tiny_transformer()
    for linear in block_linears(rounded):
        linear.weight.copy_(round_to_fp8_rows(linear.weight))
    model = tiny_transformer()
    store_blocks_in_fp8(model, torch.device("cpu"), FP8_BLOCK_LAYERS)
    torch.testing.assert_close(model(**inputs), rounded(**inputs), rtol=0, atol=0)


@torch.no_grad()
def test_group_offloading_computes_the_same_output():
    inputs = transformer_inputs(tiny_transformer())
    expected = tiny_transformer()(**inputs)
    model = tiny_transformer()
    place_transformer(model, MemoryMode.OFFLOAD, torch.device("cpu"), FP8_BLOCK_LAYERS)
    torch.testing.assert_close(model(**inputs), expected, rtol=0, atol=0)


def test_only_the_full_mode_keeps_the_text_encoder_on_the_gpu():
    gpu = torch.device("cuda", 0)
    homes = {mode: text_encoder_home(mode, gpu).type for mode in MemoryMode}
    computes = {mode: text_encoder_compute_device(mode, gpu).type for mode in MemoryMode}
    assert homes == {MemoryMode.FULL: "cuda", MemoryMode.FP8: "cpu", MemoryMode.OFFLOAD: "cpu"}
    assert computes == {MemoryMode.FULL: "cuda", MemoryMode.FP8: "cuda", MemoryMode.OFFLOAD: "cpu"}
