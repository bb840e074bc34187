"""The Live Avatar LoRA of the fast mode, on the shared adapter (model/wan_common/lora.py).

One worker serves both modes, job by job: `quality` jobs see the base weights and `fast` jobs the
LoRA's, which is active only while a fast job runs; merging it would take a second 32 GB
transformer or leave the worker unable to run quality jobs.

The cost, for the 14B model (dim 5120, ffn 13824, 40 blocks, 12 audio injectors) at rank 128:
- compute, while active: two rank-128 matmuls per targeted linear, r * (in + out) multiply-adds
  per token against in * out for the layer itself: 5.0% for a 5120x5120 attention linear and 3.4%
  for a 5120x13824 feed-forward linear. Per video token (self-attention q/k/v/o, cross-attention
  q/o, both feed-forward linears in every block, the injectors' q/o) that is 1.08 GFLOP on top
  of 25.2 GFLOP of linears, +4.3%; attention itself is untouched, so the whole forward grows by
  less. The keys and values of cross-attention and the injectors run on the 512 text tokens and
  4 audio tokens per frame, not on the video's thousands.
- memory: A and B of the 40 x (8 attention + 2 feed-forward) + 12 x 4 injector linears hold
  676,331,520 values, 1.35 GB (1.26 GiB) in bf16, in quality jobs too: on the GPU in the full and
  fp8 modes (the fp8 mode quantises weights, not buffers); in the offload mode they travel with
  their block, 1.35 GB more per forward on top of the 32 GB of weights (+4%).

Live Avatar trained its LoRA with peft on the official `WanModel_S2V`, so the file names the
official modules; peft's target names ("q", "k", "v", "o", "ffn.0", "ffn.2") match by suffix, so
the audio injectors' attention (`audio_injector.injector.N.q`) has pairs too.
"""

from __future__ import annotations

from model.wan_common.lora import LoraFormat

from .config import LORA_FILE, LORA_REPO_ID
from .convert_transformer import convert_transformer_key

LIVE_AVATAR_LORA = LoraFormat(
    to_parameter=convert_transformer_key, model="Wan2.2-S2V-14B", example=f"{LORA_FILE} of {LORA_REPO_ID}"
)
