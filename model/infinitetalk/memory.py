"""InfiniteTalk's figures for the shared memory modes (model/wan_common/memory.py): the free GPU
memory each mode needs and the block layers the fp8 mode stores in float8.

Estimates, not yet measured on a GPU (scripts/benchmark_gpu.py would): the transformer holds
16.4B parameters in bf16 (~33 GB: Wan2.1-I2V-14B and the 2.4B of InfiniteTalk's audio modules),
umT5 ~11 GB, CLIP's vision tower ~1.3 GB in fp16, the VAE and wav2vec2 under 1 GB; a 640x640
clip of 81 frames (21 latent frames, 33,600 tokens) needs some 10 GB of activations. The fp8 mode
stores the attention and feed-forward linears of the 40 blocks (12.8B parameters) in float8.
"""

from __future__ import annotations

from model.wan_common.memory import GIB, MemoryMode

MIN_FREE_BYTES = {
    MemoryMode.FULL: 60 * GIB,
    MemoryMode.FP8: 34 * GIB,
    MemoryMode.OFFLOAD: 0,
}

# diffusers' names of a block's self-attention, text/image cross-attention and feed-forward; the
# audio cross-attention (the speech's only way in) and the modulations stay in bf16
FP8_BLOCK_LAYERS = ("attn1", "attn2", "ffn")
