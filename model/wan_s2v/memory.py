"""Wan2.2-S2V's figures for the shared memory modes (model/wan_common/memory.py): the free GPU
memory each mode needs, the block layers the fp8 mode stores in float8, and the fast mode's room.

For the 14B model the fp8 mode stores 14.1B of the transformer's 16.3B parameters in float8 (the
attention and feed-forward linears of its 40 blocks); the audio injectors and every modulation stay
in bf16. full fits 80 GB class cards, fp8 48 GB (720p included), offload 24 GB.
"""

from __future__ import annotations

import dataclasses

import torch

from model.wan_common.memory import GIB, MemoryMode
from model.wan_common.placement import free_gpu_bytes

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

# The layers of a transformer block whose linears the fp8 mode stores in float8. Only those: the
# audio injectors, the speech's only way into the video (1.9B parameters), and the modulation and
# adaptive-norm linears, whose outputs scale and shift every token of a frame, stay in bf16.
FP8_BLOCK_LAYERS = ("self_attn", "cross_attn", "ffn")

# Room the fast mode needs on the GPU beside its attention rings and conditioning caches, per pixel
# of video in bf16: the VAE's two decoder states and encoder state (_ClipDecoder) and a decode's
# working memory, which outweighs a block's activations with a fused attention kernel (~1 GiB at
# 704x384). Measured with the real-size VAE on the CPU (`python -m scripts.measure_fast_vae_memory`:
# 4.82 GiB at 704x384), so an estimate of the GPU's; the margin covers cuDNN's workspaces and the
# allocator's fragmentation. The `math` attention kernel adds a block's attention matrix (3.9 GB
# at 704x384), which this does not count.
FAST_VAE_BYTES_PER_PIXEL = 19150
FAST_WORKSPACE_MARGIN_BYTES = 2 * GIB


def fast_workspace_bytes(height: int, width: int) -> int:
    return FAST_VAE_BYTES_PER_PIXEL * height * width + FAST_WORKSPACE_MARGIN_BYTES


@dataclasses.dataclass(frozen=True)
class RingPlan:
    """How many of the fast mode's attention rings (one per denoising step) a job keeps on the GPU,
    the others in host memory; and whether the text encoder leaves the GPU to make room for them."""

    resident: int
    total: int
    move_text_encoder: bool = False

    def __str__(self) -> str:
        where = "all on the GPU" if self.resident == self.total else (
            f"{self.resident} of {self.total} on the GPU, the others streamed from host memory"
        )
        return where + (", once the text encoder is moved to host memory" if self.move_text_encoder else "")


def place_rings(
    ring_bytes: int, count: int, streaming_bytes: int, workspace_bytes: int, room: int | None, text_encoder_bytes: int
) -> RingPlan:
    """Where `count` rings of `ring_bytes` each go, beside `workspace_bytes`, with `room` bytes free on
    the GPU (None: no limit, as on the CPU) and `text_encoder_bytes` held there by the text encoder
    (0 where it lives in host memory). Rings in host memory are streamed through `streaming_bytes`
    of buffers on the GPU (two layers of a ring).

    The text encoder (umt5-xxl, 10.6 GiB in bf16) stays on the GPU in the full mode; prompts are
    encoded before the rings exist and are cached, so where that keeps more rings on the GPU it
    waits in host memory instead, and visits the GPU for a new prompt alone."""
    if room is None:
        return RingPlan(count, count)

    def resident_in(space: int) -> int:
        for resident in range(count, -1, -1):
            buffers = 0 if resident == count else streaming_bytes
            if resident * ring_bytes + buffers + workspace_bytes <= space:
                return resident
        return 0

    staying = resident_in(room)
    moved = resident_in(room + text_encoder_bytes) if text_encoder_bytes else staying
    if moved > staying:
        return RingPlan(moved, count, move_text_encoder=True)
    return RingPlan(staying, count)


def gpu_room(device: torch.device) -> int | None:
    """The bytes the fast mode may still allocate on `device`: None (no limit) off CUDA."""
    if device.type != "cuda":
        return None
    # memory PyTorch holds in its cache but does not use is free for this purpose too
    cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free_gpu_bytes(device) + cached_unused
