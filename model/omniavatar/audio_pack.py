"""OmniAvatar's audio pack: speech rows per video frame -> one vector per latent frame and block.

As `OmniAvatar/models/audio_pack.py` and `WanModel.forward` (wan_video_dit.py) compute it: the
first frame's row is repeated three times in front (the first latent frame stands for one video
frame, the others for four each), every 4 rows are concatenated (time-major) and projected to
AUDIO_HIDDEN_SIZE, layer-normalised; then one linear layer per audio block lifts that to the
transformer's width. The result is added, the same for every pixel of a latent frame, to the
video tokens before each audio block ("pixel-wise" embedding).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import AUDIO_FEATURE_DIM, AUDIO_HIDDEN_SIZE, AUDIO_PACK_FRAMES


class AudioPack(nn.Module):
    """[batch, video frames (4n + 1), feature_dim] -> [batch, latent frames (n + 1), hidden_size]."""

    def __init__(
        self, feature_dim: int = AUDIO_FEATURE_DIM, hidden_size: int = AUDIO_HIDDEN_SIZE,
        frames: int = AUDIO_PACK_FRAMES,
    ) -> None:
        super().__init__()
        self.frames = frames
        self.proj = nn.Linear(feature_dim * frames, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, speech: torch.Tensor) -> torch.Tensor:
        batch, video_frames, channels = speech.shape
        if video_frames % self.frames != 1:
            raise ValueError(f"speech rows must be {self.frames}n + 1 video frames, got {video_frames}")
        lead = speech[:, :1].expand(batch, self.frames - 1, channels)
        packed = torch.cat([lead, speech], dim=1).reshape(batch, -1, self.frames * channels)
        return self.norm(self.proj(packed))


class AudioInjection(nn.Module):
    """The audio pack and one projection per audio block: [blocks, batch, latent frames, dim]."""

    def __init__(self, num_blocks: int, dim: int, feature_dim: int = AUDIO_FEATURE_DIM,
                 hidden_size: int = AUDIO_HIDDEN_SIZE) -> None:
        super().__init__()
        self.pack = AudioPack(feature_dim, hidden_size)
        self.block_projections = nn.ModuleList(nn.Linear(hidden_size, dim) for _ in range(num_blocks))

    def forward(self, speech: torch.Tensor) -> torch.Tensor:
        packed = self.pack(speech)
        return torch.stack([projection(packed) for projection in self.block_projections])
