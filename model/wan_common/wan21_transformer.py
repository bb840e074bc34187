"""What a Wan2.1 model built on diffusers' `WanTransformer3DModel` shares around its own blocks.

A subclass (InfiniteTalk's, OmniAvatar's) keeps diffusers' embeddings, rotary embedding and
output head and writes its own `forward` around its blocks; these are the steps before and after
them, as diffusers' own `forward` takes them.
"""

from __future__ import annotations

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel


class Wan21Transformer3DModel(WanTransformer3DModel):
    """diffusers' Wan2.1 transformer with its forward's steps as methods (the config stays the subclass's)."""

    def patch_grid(self, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        """Patches along time, height and width of latents [batch, channels, frames, h, w]."""
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        return frames // p_t, height // p_h, width // p_w

    def embed_patches(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Latents -> video tokens [batch, patches, dim] and their rotary embedding."""
        rotary_emb = self.rope(hidden_states)
        return self.patch_embedding(hidden_states).flatten(2).transpose(1, 2), rotary_emb

    def embed_conditions(
        self, timestep: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The time embedding (for the head), each block's six modulations [batch, 6, dim], the
        projected text states and the projected image states (None without an image)."""
        temb, timestep_proj, text, image = self.condition_embedder(timestep, text, image)
        return temb, timestep_proj.unflatten(1, (6, -1)), text, image

    def video_output(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, grid: tuple[int, int, int], return_dict: bool
    ) -> torch.Tensor | Transformer2DModelOutput:
        """The head on the blocks' video tokens, unpatchified to [batch, out_channels, frames, h, w]."""
        p_t, p_h, p_w = self.config.patch_size
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(hidden_states.shape[0], *grid, p_t, p_h, p_w, -1)
        output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (output,)  # type: ignore[return-value]
        return Transformer2DModelOutput(sample=output)
