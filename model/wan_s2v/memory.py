"""Wan2.2-S2V's figures for the shared memory modes (model/wan_common/memory.py): the free GPU
memory each mode needs, the block layers the fp8 mode stores in float8, and the fast mode's room.

For the 14B model the fp8 mode stores 14.1B of the transformer's 16.3B parameters in float8 (the
attention and feed-forward linears of its 40 blocks); the audio injectors and every modulation stay
in bf16. full fits 80 GB class cards, fp8 48 GB (720p included), offload 24 GB.
"""

from __future__ import annotations

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
