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

The file is checked, not trusted (`LIVE_AVATAR_EXPECTATION`): Live Avatar's loader
(`add_lora_to_model` in liveavatar/models/wan/causal_s2v_pipeline.py, with the rank, alpha and
targets of liveavatar/configs/s2v_causal_sft.yaml, which infinite_inference_single_gpu.sh passes)
builds a peft model of rank 128 over those targets and loads the file into it non-strictly, so a
key it does not spell as peft does is skipped without a word and a layer the file lacks keeps
peft's zero B. A file that differs (a targeted layer without its pair, another rank, a key that
would be skipped, or no safetensors file at all) leaves the fast mode unavailable, saying what
differs; the quality mode goes on (`attach_live_avatar_lora`).
tests/test_wan_lora_reference.py reads those facts from the reference's checkout.
"""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors import SafetensorError
from torch import nn

from model.base import ModelUnavailableError
from model.wan_common.lora import LoraAdapter, LoraExpectation, LoraFormat

from .config import LORA_ALPHA, LORA_FILE, LORA_REPO_ID
from .convert_transformer import convert_transformer_key

log = logging.getLogger(__name__)

LIVE_AVATAR_LORA = LoraFormat(
    to_parameter=convert_transformer_key, model="Wan2.2-S2V-14B", example=f"{LORA_FILE} of {LORA_REPO_ID}"
)

# The official modules peft's suffixes "q", "k", "v", "o", "ffn.0" and "ffn.2" reach (every one a
# linear layer): in each block, self- and cross-attention's four projections and the feed-forward
# pair; in each audio injector, its cross-attention's four.
TARGETS_PER_BLOCK = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
    "ffn.0", "ffn.2",
)
TARGETS_PER_AUDIO_INJECTOR = ("q", "k", "v", "o")
# Live Avatar's lora_rank (its alpha is config.LORA_ALPHA).
LORA_RANK = 128


def live_avatar_targets(transformer: nn.Module) -> tuple[str, ...]:
    """The official names of the layers Live Avatar's LoRA adapts in a transformer of this shape."""
    blocks = sum(1 for _ in transformer.get_submodule("blocks").children())
    injectors = sum(1 for _ in transformer.get_submodule("audio_injectors").children())
    return tuple(f"blocks.{i}.{name}" for i in range(blocks) for name in TARGETS_PER_BLOCK) + tuple(
        f"audio_injector.injector.{i}.{name}" for i in range(injectors) for name in TARGETS_PER_AUDIO_INJECTOR
    )


LIVE_AVATAR_EXPECTATION = LoraExpectation(targets=live_avatar_targets, rank=LORA_RANK)


def attach_live_avatar_lora(
    transformer: nn.Module, path: Path, expectation: LoraExpectation = LIVE_AVATAR_EXPECTATION
) -> LoraAdapter | ModelUnavailableError:
    """The fast mode's LoRA at `path` attached to `transformer` (inactive), or why the fast mode is
    unavailable: the file is checked against `expectation` first, and a file that differs from it,
    does not fit the transformer or cannot be read leaves the transformer as it was."""
    try:
        problems = expectation.problems(path, transformer, LIVE_AVATAR_LORA)
        if not problems:
            return LoraAdapter.attach(transformer, path, LORA_ALPHA, LIVE_AVATAR_LORA)
    except (SafetensorError, OSError) as error:
        problems = [f"it is not a readable safetensors file ({type(error).__name__}: {error})"]
    except ValueError as error:  # attach's: a shape that does not fit the transformer
        problems = [str(error)]
    log.warning("mode 'fast' is unavailable: the LoRA %s differs from Live Avatar's: %s", path, "; ".join(problems))
    return ModelUnavailableError(
        f"the Live Avatar LoRA of the fast mode at {path} is not the one Live Avatar publishes "
        f"(rank {expectation.rank}, peft's key names): {'; '.join(problems)}. "
        f"Replace it with {LORA_FILE} of {LORA_REPO_ID} (delete it and the worker downloads it again at its "
        "next start); quality jobs are unaffected"
    )
