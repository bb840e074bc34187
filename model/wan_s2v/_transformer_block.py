"""One S2V transformer block: Wan's self-attention, text cross-attention and feed-forward, with
modulation that differs between the noisy video tokens and the conditioning tokens after them.

The residual stream is float32 (the official model's is too: its float32 modulation promotes it
after the first block); the attention and feed-forward layers run in the weights' dtype.

The fast mode (Live Avatar) runs the same block with another self-attention, over a cache of
earlier tokens (see _transformer_causal.py), and with the residual rounded to bfloat16 before the
text cross-attention's norm, as its reference does: the distilled weights were trained that way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# Token segments of the sequence: the noisy video tokens, then the conditioning tokens (reference
# image and motion), which are modulated with their own timestep (zero in the official model).
VIDEO, CONDITION = 0, 1

# WAN_ATTENTION_BACKEND's choices: "auto" leaves the kernel to torch's SDPA dispatcher (it picks
# FlashAttention, memory-efficient or cuDNN per GPU and input); another names the one kernel to
# prefer, with the math kernel as the fallback wherever that one cannot take the inputs.
ATTENTION_KERNELS: dict[str, SDPBackend | None] = {
    "auto": None,
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def attention_kernel(name: str, fallback: bool = True) -> contextlib.AbstractContextManager:
    """The context every attention of a pass runs in for the kernel `name` (ATTENTION_KERNELS);
    without `fallback`, SDPA raises where the kernel cannot run (the benchmark's probe)."""
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel {name!r} is not one of {', '.join(ATTENTION_KERNELS)}")
    kernel = ATTENTION_KERNELS[name]
    if kernel is None:
        return contextlib.nullcontext()
    kernels = [kernel] if kernel is SDPBackend.MATH or not fallback else [kernel, SDPBackend.MATH]
    return sdpa_kernel(kernels, set_priority=True)


# (the block's self-attention module, its normalised and modulated input) -> the attention output
SelfAttention = Callable[[WanAttention, torch.Tensor], torch.Tensor]


class WanS2VTransformerBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_heads: int, cross_attn_norm: bool, eps: float):
        super().__init__()
        self.self_attn_norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanAttention(
            dim=dim, heads=num_heads, dim_head=dim // num_heads, eps=eps, processor=WanAttnProcessor()
        )
        self.cross_attn_norm = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanAttention(
            dim=dim,
            heads=num_heads,
            dim_head=dim // num_heads,
            eps=eps,
            cross_attention_dim_head=dim // num_heads,
            processor=WanAttnProcessor(),
        )
        self.ffn_norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        # shift, scale, gate of the self-attention; shift, scale, gate of the feed-forward
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        text_states: torch.Tensor,
        timestep_modulation: torch.Tensor,
        num_video_tokens: int,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        self_attention: SelfAttention | None = None,
        round_cross_attention_input: bool = False,
    ) -> torch.Tensor:
        """Update the float32 `hidden_states` [B, N, dim] in place and return them.

        `timestep_modulation` is [B, 2, 6, dim] (float32): per segment (VIDEO, CONDITION), the six
        timestep projections; the first `num_video_tokens` tokens are the VIDEO segment.
        Self-attention is full attention over the tokens with `rotary_emb`, unless
        `self_attention` replaces it.
        """
        modulation = self.scale_shift_table.float().unsqueeze(1) + timestep_modulation
        shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = modulation.unbind(dim=2)
        dtype = self.self_attn.to_q.weight.dtype

        normed = _modulate(self.self_attn_norm(hidden_states), shift, scale, num_video_tokens)
        if self_attention is None:
            attended = self.self_attn(normed.to(dtype), rotary_emb=rotary_emb)
        else:
            attended = self_attention(self.self_attn, normed.to(dtype))
        _add_gated(hidden_states, attended, gate, num_video_tokens)

        cross_input = hidden_states.to(torch.bfloat16) if round_cross_attention_input else hidden_states
        normed = self.cross_attn_norm(cross_input)
        hidden_states += self.cross_attn(normed.to(dtype), encoder_hidden_states=text_states)

        normed = _modulate(self.ffn_norm(hidden_states), ffn_shift, ffn_scale, num_video_tokens)
        _add_gated(hidden_states, self.ffn(normed.to(dtype)), ffn_gate, num_video_tokens)
        return hidden_states


def _segments(tokens: torch.Tensor, num_video_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tokens[:, :num_video_tokens], tokens[:, num_video_tokens:]


def _modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, num_video_tokens: int) -> torch.Tensor:
    """normed * (1 + scale) + shift per segment, in place on the freshly normalised `normed`."""
    for segment, tokens in enumerate(_segments(normed, num_video_tokens)):
        tokens.mul_(1 + scale[:, segment : segment + 1]).add_(shift[:, segment : segment + 1])
    return normed


def _add_gated(residual: torch.Tensor, update: torch.Tensor, gate: torch.Tensor, num_video_tokens: int) -> None:
    """residual += update * gate per segment, in float32."""
    pairs = zip(_segments(residual, num_video_tokens), _segments(update, num_video_tokens), strict=True)
    for segment, (residual_part, update_part) in enumerate(pairs):
        residual_part.addcmul_(update_part, gate[:, segment : segment + 1])
