"""Putting a Wan transformer and text encoder where a memory mode (memory.py) keeps them.

fp8 stores the chosen linears of each transformer block in float8 with a float32 scale per output
row, a little over half their bf16 memory; offload is diffusers' group offloading, one block per
group, streamed on a side CUDA stream.

torchao's row-wise float8 with dynamic activation scaling was not measured against the fp8 mode
(no GPU with float8 matmuls was at hand).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import torch
from diffusers.models.modeling_utils import ModelMixin

from model.torch_backend import TorchBackend

from .memory import MemoryMode, MemoryModeError, choose_memory_mode, out_of_memory_message

# The float8 storage format; e4m3 keeps more mantissa than e5m2, which is what weights need.
FP8_STORAGE_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_STORAGE_DTYPE).max

log = logging.getLogger(__name__)


def execution_target(
    model: str, weights: Path, memory_mode: str | None, min_free_bytes: Mapping[MemoryMode, int],
) -> tuple[torch.device, torch.dtype, MemoryMode]:
    """Where and in what dtype `model` runs, and its memory mode: WAN_MEMORY_MODE's value (`memory_mode`),
    else the largest whose `min_free_bytes` the GPU has free. Without CUDA: float32 on the CPU for a
    tiny test checkpoint (its config in `weights`), HostUnfitError for a real one.
    Raises ModelUnavailableError for a mode that does not fit."""
    from model.base import ModelUnavailableError
    from model.torch_backend import check_cpu_can_run

    from .checkpoint import transformer_width

    if not torch.cuda.is_available():
        check_cpu_can_run(model, transformer_width(weights))
        return torch.device("cpu"), torch.float32, MemoryMode.FULL
    device = torch.device("cuda", torch.cuda.current_device())
    free = free_gpu_bytes(device)
    try:
        mode = choose_memory_mode(free, memory_mode, min_free_bytes)
    except MemoryModeError as error:
        raise ModelUnavailableError(str(error)) from None
    log.info("%.1f GiB of GPU memory free: memory mode %s", free / 1024**3, mode.value)
    return device, torch.bfloat16, mode


def free_gpu_bytes(device: torch.device) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return free


def text_encoder_home(mode: MemoryMode, gpu: torch.device) -> torch.device:
    """Where umt5-xxl (11 GB in bf16) is kept between prompts: on the GPU only in the full mode,
    so that the smaller modes have those 11 GB for denoising."""
    return gpu if mode is MemoryMode.FULL else torch.device("cpu")


def text_encoder_compute_device(mode: MemoryMode, gpu: torch.device) -> torch.device:
    """Where a new prompt is encoded (prompts are cached, so this is rare). The fp8 mode brings the
    encoder to the GPU for that moment, when nothing else is running there; the offload mode,
    meant for 24 GB cards, encodes on the CPU."""
    return torch.device("cpu") if mode is MemoryMode.OFFLOAD else gpu


def place_transformer(
    transformer: ModelMixin, mode: MemoryMode, gpu: torch.device, fp8_layers: Sequence[str]
) -> None:
    """Put the transformer (loaded in bf16 on the CPU, or already on `gpu` in full mode) in place;
    `fp8_layers` are the block attributes whose linears the fp8 mode stores in float8."""
    if mode is MemoryMode.FULL:
        transformer.to(gpu)
    elif mode is MemoryMode.FP8:
        store_blocks_in_fp8(transformer, gpu, fp8_layers)
        transformer.to(gpu)
    else:
        transformer.enable_group_offload(
            onload_device=gpu,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=gpu.type == "cuda",
        )


def store_blocks_in_fp8(transformer: torch.nn.Module, device: torch.device, layers: Sequence[str]) -> None:
    """Quantise the linears of `layers` (attributes of each of the transformer's `blocks`) onto `device`.

    A block's weights are expanded to bf16 just before it runs and dropped right after, so at most
    one block exists in bf16 at a time. Expanding the whole block, rather than each layer as
    diffusers' layerwise casting does, keeps every weight a bf16 tensor for the block's own code,
    which reads weight dtypes. Each weight is moved to `device` before it is quantised, so the
    GPU never holds more than one weight at a time in more than float8.
    """
    for block in cast(torch.nn.ModuleList, transformer.blocks):
        linears = [
            module
            for name in layers
            for module in getattr(block, name).modules()
            if isinstance(module, torch.nn.Linear)
        ]
        for linear in linears:
            _quantise_weight(linear, device)
        block.register_forward_pre_hook(lambda _block, _args, linears=linears: _expand_weights(linears))
        block.register_forward_hook(lambda _block, _args, _output, linears=linears: _drop_weights(linears))


def _quantise_weight(linear: torch.nn.Linear, device: torch.device) -> None:
    weight = linear.weight.detach().to(device).float()
    # float32: a bf16 scale would add its own 2^-9 rounding to every weight of the row
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    linear.register_buffer("weight_fp8", (weight / scale).to(FP8_STORAGE_DTYPE), persistent=False)
    linear.register_buffer("weight_scale", scale, persistent=False)
    _drop_weights([linear])


def _expand_weights(linears: list[torch.nn.Linear]) -> None:
    for linear in linears:
        # the empty placeholder left by _drop_weights carries the compute dtype (and follows .to())
        weight_fp8, weight_scale = cast(torch.Tensor, linear.weight_fp8), cast(torch.Tensor, linear.weight_scale)
        expanded = (weight_fp8.float() * weight_scale).to(linear.weight.dtype)
        linear.weight = torch.nn.Parameter(expanded, requires_grad=False)


def _drop_weights(linears: list[torch.nn.Linear]) -> None:
    for linear in linears:
        linear.weight = torch.nn.Parameter(linear.weight.new_empty(0), requires_grad=False)


class MemoryModeBackend(TorchBackend):
    """A Wan-family backend that runs in one of the shared memory modes (memory.py), set as
    `memory_mode` when it is built."""

    memory_mode: MemoryMode

    def out_of_memory_message(self) -> str:
        return out_of_memory_message(self.memory_mode)

    @property
    def memory_mode_name(self) -> str:
        return self.memory_mode.value
