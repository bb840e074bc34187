"""Timestep embedding and the float32 arithmetic the official model uses for its conditioning.

The official code runs the timestep embedding, the modulation and the output head under
`autocast(float32)`: with bfloat16 weights these layers still compute in float32. The helpers
here reproduce that without autocast (which CPUs do not offer in float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear_float32(layer: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    """`layer(inputs)` computed in float32 whatever the layer's dtype."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(inputs.float(), layer.weight.float(), bias)


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos | sin] features of the timesteps, computed in float64 as the official model does."""
    half = dim // 2
    positions = timesteps.to(torch.float64)
    frequencies = torch.pow(10000, -torch.arange(half, device=timesteps.device, dtype=torch.float64) / half)
    angles = torch.outer(positions, frequencies)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class TimestepEmbedder(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear, in float32 (named like diffusers' `TimestepEmbedding`)."""

    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(timesteps, self.freq_dim)
        return linear_float32(self.linear_2, F.silu(linear_float32(self.linear_1, features)))
