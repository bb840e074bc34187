"""The output size of Wan2.2-S2V for a portrait and a pixel-area budget.

This is the reference's rule (`WanS2V.get_size_less_than_area`): scale the portrait so that, once
both sides are padded up to a multiple of 64, the area still fits the budget. A portrait already
inside the budget is not shrunk, so its padded size may be slightly larger than the portrait; the
generation then resizes and centre-crops the portrait to exactly this size.
"""

from __future__ import annotations

import math

from .config import SIZE_DIVISOR

# The reference tries this many scales between the largest and the smallest candidate.
_SCALE_CANDIDATES = 100


def output_size(height: int, width: int, max_area: int) -> tuple[int, int]:
    """(height, width) of the video for a `height` x `width` portrait and a `max_area` budget."""
    min_scale, max_scale = _scale_bounds(height, width, max_area)
    for i in range(_SCALE_CANDIDATES):
        scale = max_scale - (max_scale - min_scale) * i / _SCALE_CANDIDATES
        padded_height = _round_up(int(height * scale))
        padded_width = _round_up(int(width * scale))
        if padded_height * padded_width <= max_area:
            return padded_height, padded_width
    return _fallback_size(height, width, max_area)


def video_size(height: int, width: int, max_area: int) -> tuple[int, int]:
    """The reference's size, but never larger than the portrait (the worker's contract).

    Where the reference would pad a small portrait up to the next multiple, each side is rounded
    down instead, and the portrait is centre-cropped to that size rather than upscaled.
    """
    out_height, out_width = output_size(height, width, max_area)
    if out_height <= height and out_width <= width:
        return out_height, out_width
    return (
        max(SIZE_DIVISOR, height // SIZE_DIVISOR * SIZE_DIVISOR),
        max(SIZE_DIVISOR, width // SIZE_DIVISOR * SIZE_DIVISOR),
    )


def _scale_bounds(height: int, width: int, max_area: int) -> tuple[float, float]:
    if height * width <= max_area:
        return 0.1, 1.0
    # Lower bound from the worst case where both sides need almost a full divisor of padding,
    # (h*s + d) * (w*s + d) = max_area. The reference's discriminant has 2ac where the quadratic
    # formula has 4ac; it is kept so that the sizes, and thus the outputs, are the reference's.
    d = SIZE_DIVISOR - 1
    a = height * width
    b = d * (height + width)
    c = d**2 - max_area
    min_scale = (-b + math.sqrt(b**2 - 2 * a * c)) / (2 * a)
    max_scale = math.sqrt(max_area / (height * width))
    return min_scale, max_scale


def _round_up(side: int) -> int:
    return side + (SIZE_DIVISOR - side % SIZE_DIVISOR) % SIZE_DIVISOR


def _fallback_size(height: int, width: int, max_area: int) -> tuple[int, int]:
    aspect_ratio = width / height
    out_width = int((max_area * aspect_ratio) ** 0.5 // SIZE_DIVISOR * SIZE_DIVISOR)
    out_height = int((max_area / aspect_ratio) ** 0.5 // SIZE_DIVISOR * SIZE_DIVISOR)
    if out_width >= width or out_height >= height:
        out_width = int(width // SIZE_DIVISOR * SIZE_DIVISOR)
        out_height = int(height // SIZE_DIVISOR * SIZE_DIVISOR)
    return out_height, out_width
