"""Frames between the worker's RGB uint8 arrays and a Wan VAE's pixels in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def fit_portrait(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize the shorter side to min(height, width), then centre-crop (zero-padding if short).

    This is torchvision's `Resize(min(h, w))` + `CenterCrop((h, w))` on a PIL image, which the
    reference applies; bilinear PIL resampling, truncated long side, rounded crop offsets.
    """
    source_h, source_w = image.shape[:2]
    short = min(height, width)
    if source_w <= source_h:
        new_w, new_h = short, int(short * source_h / source_w)
    else:
        new_w, new_h = int(short * source_w / source_h), short
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    pad_h, pad_w = max(0, height - new_h), max(0, width - new_w)
    if pad_h or pad_w:
        resized = np.pad(
            resized,
            ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
        )
        new_h, new_w = resized.shape[:2]
    top = int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0))
    return resized[top : top + height, left : left + width]


def to_pixels(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> [3, H, W] float32 in [-1, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0 * 2 - 1


def to_uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """[1, 3, n, H, W] in [-1, 1] -> (n, H, W, 3) uint8, truncating like the reference's writer."""
    scaled = ((pixels[0].clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)
    return scaled.permute(1, 2, 3, 0).contiguous().cpu().numpy()
