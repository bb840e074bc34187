"""OmniAvatar's transformer: diffusers' Wan2.1-T2V `WanTransformer3DModel` with its audio embedding.

The Wan2.1-T2V part is diffusers' class with its own names and blocks, so the official Wan2.1
weights load as diffusers converts them. OmniAvatar (`OmniAvatar/models/wan_video_dit.py`) changes:

- the patch embedding takes IN_CHANNELS: the noisy latents, the portrait's (and later the
  previous chunk's) latents and the mask of the given frames;
- `audio_injection` (audio_pack.py) turns the speech rows into one vector per latent frame and
  audio block, added to every video token of that frame before blocks 2 .. num_layers // 2.

The text states are taken as given: the pipeline zero-pads them to TEXT_LEN, as the reference's
prompter does (its transformer does not pad).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from model.wan_common.wan21_transformer import Wan21Transformer3DModel

from .audio_pack import AudioInjection
from .config import AUDIO_FEATURE_DIM, AUDIO_HIDDEN_SIZE, IN_CHANNELS, audio_blocks


class OmniAvatarTransformer3DModel(Wan21Transformer3DModel):
    """Wan2.1-T2V (no image embeddings) with OmniAvatar's audio modules; defaults: the 14B model."""

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = IN_CHANNELS,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        audio_feature_dim: int = AUDIO_FEATURE_DIM,
        audio_hidden_size: int = AUDIO_HIDDEN_SIZE,
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
            num_layers=num_layers,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=None,
            added_kv_proj_dim=None,
            rope_max_seq_len=rope_max_seq_len,
        )
        self.audio_block_indices = tuple(audio_blocks(num_layers))
        self.audio_injection = AudioInjection(
            len(self.audio_block_indices), num_attention_heads * attention_head_dim, audio_feature_dim,
            audio_hidden_size,
        )

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        speech: torch.Tensor,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """One denoising prediction.

        hidden_states: [batch, in_channels, latent frames, h, w]; timestep: [batch];
        encoder_hidden_states: [batch, tokens, text_dim] umT5 states; speech: [batch, video
        frames, audio_feature_dim] (`speech.SpeechEncoder` rows, video frames = 1 + 4 (latent
        frames - 1)).
        """
        batch, _, frames = hidden_states.shape[:3]
        grid = self.patch_grid(hidden_states)
        if speech.shape[0] != batch or speech.shape[1] != 1 + 4 * (frames - 1):
            raise ValueError(
                f"speech of shape {tuple(speech.shape)} does not fit {batch} samples of {frames} latent frames: "
                f"it needs [{batch}, {1 + 4 * (frames - 1)}, features]"
            )
        if self.config.patch_size[0] != 1:
            raise ValueError("OmniAvatar's audio is added per latent frame: patch_size must keep time (1, h, w)")

        hidden_states, rotary_emb = self.embed_patches(hidden_states)
        temb, timestep_proj, text, _ = self.embed_conditions(timestep, encoder_hidden_states)

        # [blocks, batch, latent frames, dim] -> the same vector for every token of a latent frame
        audio = self.audio_injection(speech.to(hidden_states.dtype))
        tokens_per_frame = grid[1] * grid[2]
        audio_by_block = dict(zip(self.audio_block_indices, audio, strict=True))

        for index, block in enumerate(self.blocks):
            if index in audio_by_block:
                hidden_states = hidden_states + audio_by_block[index].repeat_interleave(tokens_per_frame, dim=1)
            hidden_states = block(hidden_states, text, timestep_proj, rotary_emb)

        return self.video_output(hidden_states, temb, grid, return_dict)
