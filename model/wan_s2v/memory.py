"""How the 49 GB of Wan2.2-S2V weights are spread over a GPU: three memory modes.

- full: every model in bf16 on the GPU (80 GB class cards).
- fp8: the linear weights of the attention and feed-forward layers of the transformer's 40 blocks
  (14.1B of its 16.3B parameters) stored in float8 with a float32 scale per output row, and
  expanded to bf16 one block at a time as it runs; a little over half the transformer's bf16
  memory. The audio injectors and every modulation stay in bf16. The text encoder is kept in
  host memory and visits the GPU only to encode a prompt not seen before (48 GB class, 720p
  included).
- offload: the transformer's blocks kept in pinned host memory and streamed to the GPU one group
  ahead of use on a side CUDA stream (diffusers' group offloading); the text encoder runs on the
  CPU (24 GB class).

The mode is picked from the GPU's free memory at start, or forced with WAN_MEMORY_MODE.

torchao's row-wise float8 with dynamic activation scaling was not measured against the fp8 mode
(no GPU with float8 matmuls was at hand).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from model.wan_s2v.transformer import WanS2VTransformer3DModel

GIB = 1024**3
ENV_VAR = "WAN_MEMORY_MODE"


class MemoryMode(enum.StrEnum):
    FULL = "full"
    FP8 = "fp8"
    OFFLOAD = "offload"

    @property
    def smaller(self) -> MemoryMode | None:
        """The mode that needs the next less GPU memory, or None for the smallest."""
        order = list(MemoryMode)
        index = order.index(self)
        return order[index + 1] if index + 1 < len(order) else None


# Free GPU memory each mode needs. Peaks measured by scripts/benchmark_gpu.py on an H100 for one
# clip (832x448 / 1280x704): full 51.3 / 63.3 GiB, offload 11.1 / 22.3 GiB; fp8 37.9 GiB at
# 1280x704 with the text encoder waiting in host memory (48.4 GiB when it stayed on the GPU, and
# 36.3 GiB at 832x448 then, not measured again). Those fp8 peaks predate keeping the audio
# injectors in bf16, which adds their 1.89B linear weights' second byte: 1.76 GiB, computed, not
# measured. The thresholds fit the default 480p resolution with a margin for the CUDA context.
MIN_FREE_BYTES = {
    MemoryMode.FULL: 66 * GIB,
    MemoryMode.FP8: 38 * GIB,
    MemoryMode.OFFLOAD: 0,
}

# The float8 storage format; e4m3 keeps more mantissa than e5m2, which is what weights need.
FP8_STORAGE_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_STORAGE_DTYPE).max
# The layers of a transformer block whose linears the fp8 mode stores in float8.
FP8_BLOCK_LAYERS = ("self_attn", "cross_attn", "ffn")


class MemoryModeError(ValueError):
    """WAN_MEMORY_MODE has a value that is not a mode."""


def choose_memory_mode(free_bytes: int, forced: str | None) -> MemoryMode:
    """`forced` (the setting WAN_MEMORY_MODE) when set, else the largest mode that fits
    `free_bytes` of GPU memory."""
    forced = (forced or "").strip().lower()
    if forced:
        try:
            return MemoryMode(forced)
        except ValueError:
            names = ", ".join(mode.value for mode in MemoryMode)
            raise MemoryModeError(f"{ENV_VAR}={forced!r} is not a memory mode; use one of {names}.") from None
    for mode in MemoryMode:
        if free_bytes >= MIN_FREE_BYTES[mode]:
            return mode
    return MemoryMode.OFFLOAD


def free_gpu_bytes(device: torch.device) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return free


# Room the fast mode needs on the GPU beside its attention rings: a block's activations, the VAE
# encoding 365 frames of history chunk by chunk, the decoder's state. An estimate, not yet
# measured on a GPU.
FAST_WORKSPACE_BYTES = 8 * GIB


def fits_beside_fast_workspace(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` more (the fast mode's attention rings) fit on `device` now."""
    if device.type != "cuda":
        return True
    # memory PyTorch holds in its cache but does not use is free for this purpose too
    cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free_gpu_bytes(device) + cached_unused >= nbytes + FAST_WORKSPACE_BYTES


def out_of_memory_message(mode: MemoryMode) -> str:
    """The sentence a job that ran out of GPU memory fails with."""
    return f"the GPU ran out of memory in memory mode {mode.value!r}; {smaller_mode_advice(mode)}"


def smaller_mode_advice(mode: MemoryMode) -> str:
    """What to do when `mode` does not fit: the next smaller mode, or a larger GPU."""
    smaller = mode.smaller
    if smaller is None:
        return "it is the smallest one: lower the resolution or deploy the endpoint on a GPU with more memory."
    return (
        f"set {ENV_VAR}={smaller.value} (the next smaller mode) on the endpoint, lower the resolution, "
        "or deploy on a GPU with more memory."
    )


def text_encoder_home(mode: MemoryMode, gpu: torch.device) -> torch.device:
    """Where umt5-xxl (11 GB in bf16) is kept between prompts: on the GPU only in the full mode,
    so that the smaller modes have those 11 GB for denoising."""
    return gpu if mode is MemoryMode.FULL else torch.device("cpu")


def text_encoder_compute_device(mode: MemoryMode, gpu: torch.device) -> torch.device:
    """Where a new prompt is encoded (prompts are cached, so this is rare). The fp8 mode brings the
    encoder to the GPU for that moment, when nothing else is running there; the offload mode,
    meant for 24 GB cards, encodes on the CPU."""
    return torch.device("cpu") if mode is MemoryMode.OFFLOAD else gpu


def place_transformer(transformer: WanS2VTransformer3DModel, mode: MemoryMode, gpu: torch.device) -> None:
    """Put the transformer (loaded in bf16 on the CPU, or already on `gpu` in full mode) in place."""
    if mode is MemoryMode.FULL:
        transformer.to(gpu)
    elif mode is MemoryMode.FP8:
        store_blocks_in_fp8(transformer, gpu)
        transformer.to(gpu)
    else:
        transformer.enable_group_offload(
            onload_device=gpu,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=gpu.type == "cuda",
        )


def store_blocks_in_fp8(transformer: WanS2VTransformer3DModel, device: torch.device) -> None:
    """Quantise the attention and feed-forward linears of the transformer's `blocks` onto `device`.

    Only those: the audio injectors, the speech's only way into the video (1.9B parameters), and
    the modulation and adaptive-norm linears, whose outputs scale and shift every token of a
    frame, stay in bf16.

    A block's weights are expanded to bf16 just before it runs and dropped right after, so at most
    one block exists in bf16 at a time. Expanding the whole block, rather than each layer as
    diffusers' layerwise casting does, keeps every weight a bf16 tensor for the block's own code,
    which reads weight dtypes. Each weight is moved to `device` before it is quantised, so the
    GPU never holds more than one weight at a time in more than float8.
    """
    for block in transformer.blocks:
        linears = [
            module
            for name in FP8_BLOCK_LAYERS
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
