"""The speech conditioning of the S2V transformer: a causal audio encoder and the audio injectors.

The encoder mixes the wav2vec2 hidden layers with learned weights and compresses time 4x with
causal convolutions, giving per-latent-frame audio tokens (and, for the adaptive norm, one global
vector per frame). After selected transformer blocks an injector lets each latent frame's video
tokens cross-attend to that frame's audio tokens.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from diffusers.models.normalization import AdaLayerNorm, FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn

from model.wan_s2v._transformer_embeddings import linear_float32


@dataclasses.dataclass(frozen=True)
class AudioEmbeddings:
    """Per latent frame: `tokens` [B, T, num_tokens + 1, dim] and `frame_vectors` [B, T, dim] or None."""

    tokens: torch.Tensor
    frame_vectors: torch.Tensor | None

    def drop_leading_frames(self, count: int) -> AudioEmbeddings:
        vectors = None if self.frame_vectors is None else self.frame_vectors[:, count:]
        return AudioEmbeddings(self.tokens[:, count:], vectors)


class CausalConv1d(nn.Conv1d):
    """A 1-D convolution that only looks back in time (replicate-padded on the left), in float32."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        padded = F.pad(inputs.float(), (self.kernel_size[0] - 1, 0), mode="replicate")
        bias = None if self.bias is None else self.bias.float()
        return F.conv1d(padded, self.weight.float(), bias, self.stride)


class CausalAudioEncoder(nn.Module):
    """wav2vec2 hidden layers [B, layers, audio_dim, frames] -> AudioEmbeddings at a quarter of the rate.

    Runs in float32 whatever its weights' dtype, as the official model does.
    """

    def __init__(self, audio_dim: int, num_layers: int, dim: int, num_tokens: int, with_frame_vectors: bool):
        super().__init__()
        self.num_tokens = num_tokens
        self.layer_weights = nn.Parameter(torch.full((1, num_layers, 1, 1), 0.01))
        self.local_conv_in = CausalConv1d(audio_dim, dim // 4 * num_tokens, 3)
        self.global_conv_in = CausalConv1d(audio_dim, dim // 4, 3) if with_frame_vectors else None
        self.conv_down_1 = CausalConv1d(dim // 4, dim // 2, 3, stride=2)
        self.conv_down_2 = CausalConv1d(dim // 2, dim, 3, stride=2)
        self.global_proj = nn.Linear(dim, dim) if with_frame_vectors else None
        self.padding_token = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, features: torch.Tensor) -> AudioEmbeddings:
        weights = F.silu(self.layer_weights.float())
        mixed = ((features.float() * weights) / weights.sum(dim=1, keepdim=True)).sum(dim=1)
        batch = mixed.shape[0]

        local = self.local_conv_in(mixed)  # [B, tokens * dim/4, T]
        local = local.unflatten(1, (self.num_tokens, -1)).flatten(0, 1)  # [B * tokens, dim/4, T]
        local = self._downsample(local)  # [B * tokens, T/4, dim]
        local = local.unflatten(0, (batch, self.num_tokens)).transpose(1, 2)  # [B, T/4, tokens, dim]
        padding = self.padding_token.float().expand(batch, local.shape[1], 1, -1)
        tokens = torch.cat([local, padding], dim=2)

        if self.global_conv_in is None or self.global_proj is None:  # both or neither
            return AudioEmbeddings(tokens, None)
        frame_vectors = linear_float32(self.global_proj, self._downsample(self.global_conv_in(mixed)))
        return AudioEmbeddings(tokens, frame_vectors)

    def _downsample(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, dim/4, T] after the input convolution -> [N, ceil(T/4), dim]."""
        hidden = F.silu(_channel_norm(hidden))
        hidden = F.silu(_channel_norm(self.conv_down_1(hidden)))
        hidden = F.silu(_channel_norm(self.conv_down_2(hidden)))
        return hidden.transpose(1, 2)


def _channel_norm(hidden: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of [N, C, T] (no affine), returned as [N, C, T]."""
    channels_last = hidden.transpose(1, 2)
    return F.layer_norm(channels_last, channels_last.shape[-1:], eps=1e-6).transpose(1, 2)


class AudioInjector(nn.Module):
    """Cross-attention from one latent frame's video tokens to that frame's audio tokens.

    With `adaptive_norm` the video tokens are normalised with a scale and shift predicted from the
    frame's global audio vector (the official "adain on the attention norm").
    """

    def __init__(self, dim: int, num_heads: int, adaptive_norm: bool):
        super().__init__()
        if adaptive_norm:
            self.norm = AdaLayerNorm(embedding_dim=dim, output_dim=2 * dim, chunk_dim=1)
        else:
            self.norm = FP32LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = WanAttention(
            dim=dim,
            heads=num_heads,
            dim_head=dim // num_heads,
            eps=1e-6,
            cross_attention_dim_head=dim // num_heads,
            processor=WanAttnProcessor(),
        )

    def forward(self, video_tokens: torch.Tensor, audio: AudioEmbeddings) -> torch.Tensor:
        """video_tokens [B, T, tokens_per_frame, dim] (float32) -> the update to add to them."""
        batch, frames = video_tokens.shape[:2]
        per_frame = video_tokens.flatten(0, 1)
        dtype = self.attn.to_q.weight.dtype
        if isinstance(self.norm, AdaLayerNorm):
            assert audio.frame_vectors is not None, "an adaptive-norm model's audio encoder makes frame vectors"
            normed = self.norm(per_frame, temb=audio.frame_vectors.flatten(0, 1).to(dtype))
        else:
            normed = self.norm(per_frame)
        update = self.attn(normed.to(dtype), encoder_hidden_states=audio.tokens.flatten(0, 1).to(dtype))
        return update.unflatten(0, (batch, frames))
