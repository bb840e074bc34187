"""InfiniteTalk's colour correction: each decoded clip's colours pulled towards the first frame's.

Long videos drift in colour as every clip starts from the last one's frames. The reference
(`match_and_blend_colors` in `wan/utils/multitalk_utils.py`, on by default at strength 1) moves
every frame's CIELAB channels to the mean and spread of the conditioning portrait's, then blends
that with the frame by `strength`. The corrected frames are also the next clip's motion frames.

The sRGB <-> CIELAB conversions are the usual ones (sRGB primaries, D65 white, 2-degree observer,
with the constants scikit-image uses, so the numbers agree with the reference's), written in
torch so the worker needs no image library for them; computed in float64.
"""

from __future__ import annotations

import torch

# linear sRGB -> CIE XYZ (the sRGB specification's matrix)
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
# CIE XYZ of the D65 white point, 2-degree observer
_D65_WHITE = (0.95047, 1.0, 1.08883)
# the CIELAB function's linear segment: below this (in XYZ / white) it is linear
_LAB_EPSILON = 0.008856
_LAB_SLOPE = 7.787
_LAB_OFFSET = 16.0 / 116.0
# the inverse's threshold, as the forward's cube root of _LAB_EPSILON (rounded as it is)
_LAB_INVERSE_EPSILON = 0.2068966


def _matrix(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=like.device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels last [..., 3] -> CIELAB [..., 3] (float64)."""
    rgb = rgb.double()
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ _matrix(_XYZ_FROM_RGB, rgb).T / _matrix(_D65_WHITE, rgb)
    f = torch.where(xyz > _LAB_EPSILON, torch.pow(xyz.clamp_min(0), 1 / 3), _LAB_SLOPE * xyz + _LAB_OFFSET)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB [..., 3] -> sRGB in [0, 1] [..., 3] (float64; out-of-gamut colours clipped)."""
    lab = lab.double()
    lightness, a, b = lab.unbind(-1)
    fy = (lightness + 16.0) / 116.0
    # a negative Z is no colour: clipped to zero, as scikit-image does
    f = torch.stack([a / 500.0 + fy, fy, (fy - b / 200.0).clamp_min(0)], dim=-1)
    xyz = torch.where(f > _LAB_INVERSE_EPSILON, f**3, (f - _LAB_OFFSET) / _LAB_SLOPE) * _matrix(_D65_WHITE, lab)
    linear = xyz @ torch.linalg.inv(_matrix(_XYZ_FROM_RGB, lab)).T
    rgb = torch.where(linear > 0.0031308, 1.055 * torch.pow(linear.clamp_min(0), 1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0, 1)


def match_colours(video: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """`video` [3, frames, H, W] in [-1, 1] with each frame's CIELAB mean and spread moved to
    `reference`'s [3, H, W], blended with the frame by `strength` in [0, 1]; float32."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"the colour correction strength must be between 0 and 1, got {strength}")
    if strength == 0.0:
        return video
    source = ((video.double() + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0)  # frames, H, W, 3
    target = rgb_to_lab(((reference.double() + 1) / 2).clamp(0, 1).permute(1, 2, 0))
    lab = rgb_to_lab(source)
    source_mean, source_std = lab.mean(dim=(1, 2), keepdim=True), lab.std(dim=(1, 2), keepdim=True, correction=0)
    target_mean, target_std = target.mean(dim=(0, 1)), target.std(dim=(0, 1), correction=0)
    # a flat channel cannot be stretched: it takes the reference's mean
    scale = torch.where(source_std > 0, target_std / source_std.clamp_min(1e-300), torch.zeros_like(source_std))
    corrected = lab_to_rgb((lab - source_mean) * scale + target_mean)
    blended = (1 - strength) * source + strength * corrected
    return (blended * 2 - 1).permute(3, 0, 1, 2).float()
