"""How OmniAvatar lays a video out: its size, its frames per chunk, the speech's padded length.

As `scripts/inference.py` does: the portrait is fitted to the listed size closest in aspect
ratio; a chunk has as many video frames (4n + 1) as MAX_TOKENS latent tokens allow at that size;
the first chunk starts from the portrait (one given frame), each later one from the last
`overlap` frames of the one before, so the speech is padded (with silence) to fill whole chunks,
and each chunk gets the speech rows of its frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import MAX_TOKENS, OVERLAP_FRAMES, VAE_STRIDE

# the portrait: the one given frame of the first chunk
FIRST_CHUNK_GIVEN_FRAMES = 1


def pick_size(height: int, width: int, sizes: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (height, width) of `sizes` closest to the portrait's aspect ratio; between equally close
    ones the first, unless a later one is also as close in its longer side."""
    if not sizes:
        raise ValueError("pick_size needs at least one size")
    best: tuple[int, int] | None = None
    best_ratio = best_side = float("inf")
    for size in sizes:
        ratio = abs(size[0] / size[1] - height / width)
        side = abs(max(size) - max(height, width))
        if ratio < best_ratio or (ratio == best_ratio and side == best_side):
            best, best_ratio, best_side = (int(size[0]), int(size[1])), ratio, side
    assert best is not None
    return best


def chunk_frames(height: int, width: int, max_tokens: int = MAX_TOKENS) -> int:
    """Video frames per chunk (4n + 1) at `height` x `width`: as many as `max_tokens` latent tokens allow."""
    time_stride, space_stride = VAE_STRIDE[0], VAE_STRIDE[1]
    # tokens are 2x2 latent pixels: 16 x 16 video pixels, 4 video frames each
    frames = int(max_tokens * (space_stride * 2) ** 2 * time_stride / height / width)
    frames = frames // time_stride * time_stride + 1 if frames % time_stride else frames - (time_stride - 1)
    if frames < 1 + time_stride:
        raise ValueError(f"{height}x{width} leaves {max_tokens} tokens less than two latent frames per chunk")
    return frames


def padded_speech_frames(frames: int, chunk: int, overlap: int = OVERLAP_FRAMES) -> int:
    """The video frames the speech is padded to (>= `frames`): the first chunk's new frames
    (chunk - 1), then whole later chunks' (chunk - overlap each)."""
    first = chunk - FIRST_CHUNK_GIVEN_FRAMES
    later = chunk - overlap
    if later < 1:
        raise ValueError(f"an overlap of {overlap} frames leaves no new frame in chunks of {chunk}")
    if frames <= first:
        return first
    return first + -(-(frames - first) // later) * later



def chunk_count(padded_frames: int, chunk: int, overlap: int = OVERLAP_FRAMES) -> int:
    """Chunks that make `padded_frames` (`padded_speech_frames`) video frames after the portrait."""
    first, later = chunk - FIRST_CHUNK_GIVEN_FRAMES, chunk - overlap
    return 1 + max(0, -(-(padded_frames - first) // later))


def chunk_speech_rows(rows: torch.Tensor, chunk: int, index: int, overlap: int = OVERLAP_FRAMES) -> torch.Tensor:
    """The speech rows [chunk, channels] of chunk `index` out of all rows [padded frames, channels].

    The first chunk's given frame (the portrait) gets a row of zeros, then the first chunk - 1
    rows; a later chunk repeats the previous one's last `overlap` rows (its given frames) and
    goes on with the next chunk - overlap.
    """
    if index == 0:
        return torch.cat([torch.zeros_like(rows[:FIRST_CHUNK_GIVEN_FRAMES]), rows[: chunk - FIRST_CHUNK_GIVEN_FRAMES]])
    start = chunk - FIRST_CHUNK_GIVEN_FRAMES + (index - 1) * (chunk - overlap) - overlap
    if start + chunk > rows.shape[0]:
        raise ValueError(f"chunk {index} needs speech rows up to {start + chunk}, there are {rows.shape[0]}")
    return rows[start : start + chunk]
