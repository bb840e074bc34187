"""3-D rotary position embedding of the S2V token sequence.

Every token has a (time, height, width) position. Noisy video tokens sit on their own grid, the
reference image sits at a fixed far-away time, and FramePack's compressed motion tokens sit at
negative (past) times, spread over the area they summarise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class PositionGrid:
    """A block of tokens laid out as (time, height, width), and the positions it covers.

    `tokens[a]` tokens are spread evenly over the `extent[a]` positions starting at `start[a]`.
    A negative time start counts backwards into the past.
    """

    tokens: tuple[int, int, int]
    start: tuple[int, int, int]
    extent: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:
        return self.tokens[0] * self.tokens[1] * self.tokens[2]

    def positions(self) -> np.ndarray:
        """Integer positions of the tokens in row-major (time, height, width) order, [n, 3]."""
        axes = [_axis_positions(*axis) for axis in zip(self.tokens, self.start, self.extent, strict=True)]
        grid = np.meshgrid(*axes, indexing="ij")
        return np.stack([axis.reshape(-1) for axis in grid], axis=1)


def _axis_positions(count: int, start: int, extent: int) -> np.ndarray:
    # numpy's float linspace truncated to int, like the official implementation: the trained model
    # saw these exact (sometimes rounded-down) positions.
    if start >= 0:
        return np.linspace(start, start + extent - 1, count).astype(int)
    return -np.linspace(-start, -start - extent + 1, count).astype(int)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for a token layout, in the interleaved-pair layout diffusers' Wan attention uses.

    The head dimension is split between time, height and width like the official model. Tables
    depend only on the layout, so the last one is kept and reused across denoising steps.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"the attention head dimension must be even, got {head_dim}")
        pairs = head_dim // 2
        spatial_pairs = pairs // 3
        self.pairs_per_axis = (pairs - 2 * spatial_pairs, spatial_pairs, spatial_pairs)
        self.theta = theta
        self._cached_key: tuple | None = None
        self._cached_tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self, grids: list[PositionGrid], device: torch.device, half_precision: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each [1, num_tokens, 1, head_dim] float32, for the grids in sequence order.

        `half_precision` rounds the tables to float16, as Live Avatar's model builds them (its
        complex32 tables); the fast mode was distilled with those.
        """
        key = (tuple(grids), str(device), half_precision)
        tables = self._cached_tables
        if key != self._cached_key or tables is None:
            positions = torch.from_numpy(np.concatenate([grid.positions() for grid in grids])).to(torch.float64)
            per_axis = [
                positions[:, axis, None] * self._inverse_frequencies(pairs)
                for axis, pairs in enumerate(self.pairs_per_axis)
            ]
            angles = torch.cat(per_axis, dim=1)
            angles = angles.repeat_interleave(2, dim=1)[None, :, None, :]
            table_dtype = torch.float16 if half_precision else torch.float32
            cos, sin = (table.to(table_dtype).float().to(device) for table in (angles.cos(), angles.sin()))
            tables = self._cached_tables = (cos, sin)
            self._cached_key = key
        return tables

    def _inverse_frequencies(self, pairs: int) -> torch.Tensor:
        # on the CPU explicitly: the model may be built on the meta device and loaded by assignment
        exponents = torch.arange(0, 2 * pairs, 2, dtype=torch.float64, device="cpu") / (2 * pairs)
        return 1.0 / self.theta**exponents
