"""InfiniteTalk's audio projection: per latent frame, wav2vec2 windows -> a few context tokens.

The VAE packs 4 video frames into each latent frame after the first (which holds one). The
reference (`WanModel.forward` and `AudioProjModel` in `wan/modules/multitalk_model.py`) gives the
first latent frame its video frame's whole window, and each later one a window spanning its 4
video frames: the first frame's window up to its centre, the centres of the 2 middle frames, and
the last frame's window from its centre (window + 3 rows). Two MLP inputs (one per kind of latent
frame) share the rest of the MLP, which ends in `context_tokens` tokens of `output_dim` per
latent frame and speaker.
"""

from __future__ import annotations

import torch
from torch import nn


def latent_frame_windows(audio: torch.Tensor, vae_time_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split per-video-frame windows [speakers, frames, window, layers, hidden] (frames = 1 + k *
    stride) into the first latent frame's [speakers, 1, window, layers, hidden] and the later
    latent frames' [speakers, k, window + stride - 1, layers, hidden]."""
    speakers, frames, window = audio.shape[:3]
    if (frames - 1) % vae_time_stride or window % 2 != 1:
        raise ValueError(
            f"audio windows need 1 + {vae_time_stride}k frames and an odd window, got {frames} frames of {window}"
        )
    centre = window // 2
    later = audio[:, 1:].unflatten(1, ((frames - 1) // vae_time_stride, vae_time_stride))
    spans = torch.cat(
        [later[:, :, 0, : centre + 1], later[:, :, 1:-1, centre], later[:, :, -1, centre:]],
        dim=2,
    )
    return audio[:, :1], spans


class AudioProjection(nn.Module):
    """Windows of wav2vec2 features -> [speakers, latent frames, context_tokens, output_dim]."""

    def __init__(
        self,
        window: int,
        vae_time_stride: int,
        layers: int,
        channels: int,
        intermediate_dim: int,
        output_dim: int,
        context_tokens: int,
        norm_output: bool,
    ) -> None:
        super().__init__()
        self.vae_time_stride = vae_time_stride
        self.context_tokens, self.output_dim = context_tokens, output_dim
        self.first_frame_in = nn.Linear(window * layers * channels, intermediate_dim)
        self.later_frames_in = nn.Linear((window + vae_time_stride - 1) * layers * channels, intermediate_dim)
        self.hidden = nn.Linear(intermediate_dim, intermediate_dim)
        self.tokens_out = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim) if norm_output else nn.Identity()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        first, later = latent_frame_windows(audio, self.vae_time_stride)
        first = torch.relu(self.first_frame_in(first.flatten(2)))
        later = torch.relu(self.later_frames_in(later.flatten(2)))
        hidden = torch.relu(self.hidden(torch.cat([first, later], dim=1)))
        tokens = self.tokens_out(hidden).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(tokens)
