"""FramePack compression of the motion history (the latents of the previous clip's last frames).

The most recent latent frame is patchified like the video, the two before it 2x coarser, the
sixteen before those 4x coarser, so a long history costs few tokens. Shorter histories are
zero-padded at the old end.
"""

from __future__ import annotations

import torch
from torch import nn

from model.wan_s2v._transformer_rope import PositionGrid

# Latent frames per compression level, most recent first: 1 at full, 2 at 2x, 16 at 4x.
RECENT_FRAMES, MIDDLE_FRAMES, OLD_FRAMES = 1, 2, 16
HISTORY_FRAMES = RECENT_FRAMES + MIDDLE_FRAMES + OLD_FRAMES


class FramePackMotionEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj_1x = nn.Conv3d(in_channels, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(in_channels, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(in_channels, dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion_latents: torch.Tensor) -> torch.Tensor:
        """[B, C, T_m, h, w] -> motion tokens [B, n, dim] in the order of `position_grids`."""
        history = motion_latents[:, :, -HISTORY_FRAMES:]
        if history.shape[2] < HISTORY_FRAMES:
            missing = HISTORY_FRAMES - history.shape[2]
            history = torch.cat([history.new_zeros(*history.shape[:2], missing, *history.shape[3:]), history], dim=2)
        old, middle, recent = history.split([OLD_FRAMES, MIDDLE_FRAMES, RECENT_FRAMES], dim=2)
        dtype = self.proj_1x.weight.dtype
        tokens = [
            projection(latents.to(dtype)).flatten(2).transpose(1, 2)
            for projection, latents in ((self.proj_1x, recent), (self.proj_2x, middle), (self.proj_4x, old))
        ]
        return torch.cat(tokens, dim=1)

    @staticmethod
    def position_grids(height: int, width: int) -> list[PositionGrid]:
        """RoPE grids of the motion tokens for latents of `height` x `width`.

        Coarse tokens cover the same (full-resolution) area as the fine ones, and sit at the
        past times of the frames they summarise.
        """
        area = (height // 2, width // 2)
        middle_start = -(RECENT_FRAMES + MIDDLE_FRAMES)
        return [
            PositionGrid((1, height // 2, width // 2), (-RECENT_FRAMES, 0, 0), (RECENT_FRAMES, *area)),
            PositionGrid((1, height // 4, width // 4), (middle_start, 0, 0), (MIDDLE_FRAMES, *area)),
            PositionGrid((OLD_FRAMES // 4, height // 8, width // 8), (-HISTORY_FRAMES, 0, 0), (OLD_FRAMES, *area)),
        ]
