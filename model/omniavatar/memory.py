"""OmniAvatar's figures for the shared memory modes (model/wan_common/memory.py), per size.

Free GPU memory each mode needs. Estimates, not measured on a GPU yet: the 14B transformer is
~28 GB in bf16 (~15 GB with its blocks' linears in float8), umT5 ~11 GB (on the GPU in full mode
only), a chunk of 30000 tokens needs a few GB of activations, and the VAE decodes a chunk frame by
frame. The 1.3B's transformer is ~2.6 GB.
"""

from __future__ import annotations

from model.wan_common.memory import GIB, MemoryMode

from .declaration import SIZE_1_3B, SIZE_14B

MIN_FREE_BYTES = {
    SIZE_14B: {MemoryMode.FULL: 48 * GIB, MemoryMode.FP8: 24 * GIB, MemoryMode.OFFLOAD: 0},
    SIZE_1_3B: {MemoryMode.FULL: 20 * GIB, MemoryMode.FP8: 10 * GIB, MemoryMode.OFFLOAD: 0},
}

# diffusers' WanTransformerBlock: self-attention, cross-attention, feed-forward. The modulation
# tables, the norms and the audio modules stay in bf16.
FP8_BLOCK_LAYERS = ("attn1", "attn2", "ffn")
