"""InfiniteTalk's transformer: diffusers' Wan2.1-I2V `WanTransformer3DModel` plus its audio modules.

The Wan2.1-I2V-14B part is diffusers' class with its own names and layers (the image tokens
reach each block's cross-attention through its added key/value projections), so the official
Wan2.1 weights load as diffusers converts them. InfiniteTalk adds (`wan/modules/multitalk_model.py`):

- `audio_projection`: wav2vec2 windows -> audio tokens per latent frame and speaker;
- in every block, after the text/image cross-attention and before the feed-forward, a layer norm
  and an audio cross-attention (`norm_audio`, `audio_attn`), its output added to the residual;
- with two speakers, the block's self-attention queries and keys also give the speaker map that
  places every video token on the audio attention's 1-D rotary axis (speaker_attention.py).

A block's self-attention is computed here (with the block's own `attn1` layers and diffusers'
attention dispatch) rather than by diffusers' processor, because the speaker map needs its
queries and keys after the rotary embedding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanAttention, WanTransformer3DModel, WanTransformerBlock

from model.wan_common.wan21_transformer import Wan21Transformer3DModel

from .audio_projection import AudioProjection
from .config import TEXT_LEN
from .speaker_attention import AudioCrossAttention, speaker_attention_map, speaker_rope_positions

MAX_SPEAKERS = 2


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's 3-D rotary embedding on [batch, tokens, heads, head_dim] (pairs interleaved)."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(x)


def self_attention_with_keys(
    attn: WanAttention, hidden_states: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`attn`'s self-attention output, and its queries and keys after the rotary embedding."""
    query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
    value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
    query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
    out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
    out = out.flatten(2, 3).type_as(query)
    return attn.to_out[1](attn.to_out[0](out)), query, key


class InfiniteTalkBlock(WanTransformerBlock):
    """diffusers' Wan block with InfiniteTalk's audio cross-attention between cross-attention and FFN."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: str | None,
        cross_attn_norm: bool,
        eps: float,
        added_kv_proj_dim: int | None,
        audio_dim: int,
        speaker_rope_range: int,
        speaker_rope_interval: int,
    ) -> None:
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim)
        self.norm_audio = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.audio_attn = AudioCrossAttention(dim, audio_dim, num_heads, speaker_rope_range, speaker_rope_interval)

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        audio_tokens: torch.Tensor,
        latent_frames: int,
        speaker_regions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()
        ).chunk(6, dim=1)

        norm_hidden_states = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        video_positions = None
        if speaker_regions is None:
            attn_output = self.attn1(norm_hidden_states, None, None, rotary_emb)
        else:
            attn_output, query, key = self_attention_with_keys(self.attn1, norm_hidden_states, rotary_emb)
            regions_map = speaker_attention_map(query, key, speaker_regions, speaker_regions.shape[1])
            video_positions = speaker_rope_positions(
                regions_map, self.audio_attn.rope_range, self.audio_attn.rope_interval
            )
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm_hidden_states, encoder_hidden_states, None, None)

        norm_hidden_states = self.norm_audio(hidden_states)
        audio_output = self.audio_attn(norm_hidden_states, audio_tokens, latent_frames, video_positions)
        hidden_states = hidden_states + audio_output

        norm_hidden_states = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(
            hidden_states
        )
        ff_output = self.ffn(norm_hidden_states)
        return (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)


class InfiniteTalkTransformer3DModel(Wan21Transformer3DModel):
    """Wan2.1-I2V-14B (`WanTransformer3DModel` with image embeddings) with InfiniteTalk's audio modules.

    The defaults are the published 14B model's (`Wan-AI/Wan2.1-I2V-14B-480P` + `MeiGen-AI/InfiniteTalk`).
    `audio_layers`/`audio_channels` are the wav2vec2 features per row (chinese-wav2vec2-base's 12
    layers of 768); `audio_window` rows per video frame; `audio_output_dim`/`audio_context_tokens`
    the tokens each latent frame gets per speaker.
    """

    _no_split_modules = ["InfiniteTalkBlock"]
    _repeated_blocks = ["InfiniteTalkBlock"]
    _keep_in_fp32_modules = [*WanTransformer3DModel._keep_in_fp32_modules, "norm_audio"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = 1280,
        added_kv_proj_dim: int | None = 5120,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        audio_window: int = 5,
        audio_layers: int = 12,
        audio_channels: int = 768,
        audio_intermediate_dim: int = 512,
        audio_output_dim: int = 768,
        audio_context_tokens: int = 32,
        audio_norm_output: bool = True,
        vae_time_stride: int = 4,
        speaker_rope_range: int = 24,
        speaker_rope_interval: int = 4,
    ) -> None:
        super().__init__(
            patch_size=patch_size,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            # its blocks would be replaced at once: built for nothing (gigabytes at 14B)
            num_layers=0,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        # the parent's own registration (it is decorated too) recorded its 0
        self.register_to_config(num_layers=num_layers)
        inner_dim = num_attention_heads * attention_head_dim
        self.blocks = torch.nn.ModuleList(
            [
                InfiniteTalkBlock(
                    inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim,
                    audio_output_dim, speaker_rope_range, speaker_rope_interval,
                )
                for _ in range(num_layers)
            ]
        )
        self.audio_projection = AudioProjection(
            audio_window, vae_time_stride, audio_layers, audio_channels, audio_intermediate_dim, audio_output_dim,
            audio_context_tokens, audio_norm_output,
        )

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor,
        audio: torch.Tensor,
        speaker_regions: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """One denoising prediction.

        hidden_states: [batch, in_channels, latent frames, h, w] (noisy latents with the I2V
        condition and mask); encoder_hidden_states: [batch, <= TEXT_LEN, text_dim] umT5 states
        (zero-padded to TEXT_LEN as the reference does); encoder_hidden_states_image: [batch,
        image tokens, image_dim] CLIP features; audio: [speakers, video frames, window, layers,
        channels] (`speech.frame_windows` per speaker; video frames = 1 + 4 (latent frames - 1));
        speaker_regions: with two speakers, [3, h, w] masks at the latent size (speaker 1,
        speaker 2, background), else ignored.
        """
        batch = hidden_states.shape[0]
        grid = self.patch_grid(hidden_states)
        speakers = audio.shape[0]
        if not 1 <= speakers <= MAX_SPEAKERS:
            raise ValueError(f"InfiniteTalk animates one or two speakers, got audio for {speakers}")
        if speakers > 1 and batch != 1:
            raise ValueError("two speakers are generated one sample at a time (batch 1)")

        hidden_states, rotary_emb = self.embed_patches(hidden_states)
        hidden_states = hidden_states.contiguous()
        text = encoder_hidden_states
        if text.shape[1] > TEXT_LEN:
            raise ValueError(f"text states have {text.shape[1]} tokens, more than the model's {TEXT_LEN}")
        text = F.pad(text, (0, 0, 0, TEXT_LEN - text.shape[1]))
        temb, timestep_proj, text, image = self.embed_conditions(timestep, text, encoder_hidden_states_image)
        if image is None:
            raise ValueError("InfiniteTalk's transformer is Wan2.1-I2V: it needs image_dim (CLIP's 1280)")
        context = torch.cat([image, text], dim=1)

        # [speakers, latent frames, tokens, dim] -> each latent frame's tokens of every speaker
        audio_tokens = self.audio_projection(audio.to(hidden_states.dtype))
        audio_tokens = audio_tokens.permute(1, 0, 2, 3).flatten(1, 2)
        regions = None
        if speakers > 1:
            if speaker_regions is None:
                raise ValueError("two speakers need speaker_regions (speaker 1, speaker 2, background)")
            regions = F.interpolate(speaker_regions[None].float(), size=grid[1:], mode="nearest")[0]
            regions = (regions > 0).flatten(1).to(hidden_states.dtype)

        for block in self.blocks:
            hidden_states = block(hidden_states, context, timestep_proj, rotary_emb, audio_tokens, grid[0], regions)

        return self.video_output(hidden_states, temb, grid, return_dict)
