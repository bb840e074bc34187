"""The video size for a portrait and the portrait fitted to it, as OmniAvatar's script does.

`scripts/inference.py` fits the portrait to the listed size closest in aspect ratio
(layout.pick_size), scaling it to cover that size and cropping the middle (`resize_pad`: its
negative padding crops). A job's `resolution` bounds the area: a size larger than it is scaled
down, in steps of 16 pixels (a latent token is 16 x 16 pixels), keeping its aspect ratio.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .config import DEFAULT_MAX_HW, SIZES_720P, SIZES_BY_MAX_HW, VAE_STRIDE
from .layout import pick_size

# pixels per latent token side: the VAE's 8, times the transformer's 2x2 patches
TOKEN_PIXELS = VAE_STRIDE[1] * 2


def video_size(height: int, width: int, max_area: int) -> tuple[int, int]:
    """(height, width) of the video for a `height` x `width` portrait within `max_area` pixels."""
    sizes = SIZES_720P if max_area >= max(h * w for h, w in SIZES_720P) else SIZES_BY_MAX_HW[DEFAULT_MAX_HW]
    size_h, size_w = pick_size(height, width, sizes)
    if size_h * size_w <= max_area:
        return size_h, size_w
    scale = math.sqrt(max_area / (size_h * size_w))
    return (
        max(TOKEN_PIXELS, int(size_h * scale) // TOKEN_PIXELS * TOKEN_PIXELS),
        max(TOKEN_PIXELS, int(size_w * scale) // TOKEN_PIXELS * TOKEN_PIXELS),
    )


def fit_portrait(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """RGB uint8 `image` scaled (bilinear) to cover `height` x `width`, its middle cut out."""
    source_h, source_w = image.shape[:2]
    scale = max(height / source_h, width / source_w)
    scaled_h, scaled_w = int(source_h * scale), int(source_w * scale)
    scaled = np.asarray(Image.fromarray(image).resize((scaled_w, scaled_h), Image.BILINEAR))
    # the script's pad amounts, negative where it crops; where int() fell a pixel short it pads black
    pad_h, pad_w = height - scaled_h, width - scaled_w
    top, left = pad_h // 2, pad_w // 2
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    src_top, dst_top = max(0, -top), max(0, top)
    src_left, dst_left = max(0, -left), max(0, left)
    rows = min(height - dst_top, scaled_h - src_top)
    cols = min(width - dst_left, scaled_w - src_left)
    canvas[dst_top : dst_top + rows, dst_left : dst_left + cols] = scaled[
        src_top : src_top + rows, src_left : src_left + cols
    ]
    return canvas
