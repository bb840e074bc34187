"""InfiniteTalk's frame layout: the video size for a portrait, and where two speakers are.

The reference (`generate_infinitetalk` in `wan/multitalk.py`) picks, from a fixed table per size
bucket, the (height, width) whose aspect ratio is closest to the portrait's, and covers it with
the portrait (bilinear, both sides scaled by the larger factor, rounded up) before cropping the
centre. With two speakers it marks each speaker's region on the portrait, either the boxes given
(x_min, y_min, x_max, y_max, with x along the rows as the reference reads them) or, without
boxes, the left and right halves inset by SPEAKER_INSET; the background is what neither covers.
The masks are covered and cropped like the portrait (nearest), then shrunk to the latent size
(nearest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import SPEAKER_INSET

# height / width -> (height, width), as the reference's ASPECT_RATIO_627 and ASPECT_RATIO_960
SIZE_BUCKETS: dict[str, dict[str, tuple[int, int]]] = {
    "infinitetalk-480": {
        "0.26": (320, 1216), "0.38": (384, 1024), "0.50": (448, 896), "0.67": (512, 768), "0.82": (576, 704),
        "1.00": (640, 640), "1.22": (704, 576), "1.50": (768, 512), "1.86": (832, 448), "2.00": (896, 448),
        "2.50": (960, 384), "2.83": (1088, 384), "3.60": (1152, 320), "3.80": (1216, 320), "4.00": (1280, 320),
    },
    "infinitetalk-720": {
        "0.22": (448, 2048), "0.29": (512, 1792), "0.36": (576, 1600), "0.45": (640, 1408), "0.55": (704, 1280),
        "0.63": (768, 1216), "0.76": (832, 1088), "0.88": (896, 1024), "1.00": (960, 960), "1.14": (1024, 896),
        "1.31": (1088, 832), "1.50": (1152, 768), "1.58": (1216, 768), "1.82": (1280, 704), "1.91": (1344, 704),
        "2.20": (1408, 640), "2.30": (1472, 640), "2.67": (1536, 576), "2.89": (1664, 576), "3.62": (1856, 512),
        "3.75": (1920, 512),
    },
}


def bucket_size(height: int, width: int, bucket: str) -> tuple[int, int]:
    """The video's (height, width) for a `height` x `width` portrait in size bucket `bucket`."""
    if bucket not in SIZE_BUCKETS:
        raise ValueError(f"unknown size bucket {bucket!r}; use one of {', '.join(SIZE_BUCKETS)}")
    ratio = height / width
    # the first of equally close ratios, in the table's order
    closest = min(SIZE_BUCKETS[bucket], key=lambda key: abs(float(key) - ratio))
    return SIZE_BUCKETS[bucket][closest]


def _cover_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    scale = max(target[0] / height, target[1] / width)
    return math.ceil(scale * height), math.ceil(scale * width)


def _centre(size: int, target: int) -> int:
    return int(round((size - target) / 2.0))


def cover_and_crop(image: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 image [height, width, 3] covering `target` (bilinear) and cropped to its centre."""
    covered_h, covered_w = _cover_size(image.shape[0], image.shape[1], target)
    covered = np.asarray(Image.fromarray(image).resize((covered_w, covered_h), resample=Image.BILINEAR))
    top, left = _centre(covered_h, target[0]), _centre(covered_w, target[1])
    return covered[top : top + target[0], left : left + target[1]]


def speaker_regions(
    portrait_size: tuple[int, int],
    video_size: tuple[int, int],
    latent_size: tuple[int, int],
    boxes: Sequence[Sequence[float]] | Mapping[str, Sequence[float]] | None = None,
) -> torch.Tensor:
    """[3, latent height, latent width] float masks: speaker 1, speaker 2, background."""
    height, width = portrait_size
    if boxes is None:
        rows = slice(int(height * SPEAKER_INSET), int(height * (1 - SPEAKER_INSET)))
        half = width // 2
        left = slice(int(half * SPEAKER_INSET), int(half * (1 - SPEAKER_INSET)))
        right = slice(int(half * SPEAKER_INSET + half), int(half * (1 - SPEAKER_INSET) + half))
        regions = [(rows, left), (rows, right)]
    else:
        listed = list(boxes.values()) if isinstance(boxes, Mapping) else list(boxes)
        if len(listed) != 2:
            raise ValueError(f"two speakers need two boxes, got {len(listed)}")
        regions = [(slice(int(box[0]), int(box[2])), slice(int(box[1]), int(box[3]))) for box in listed]
    masks = torch.zeros(3, height, width)
    for index, (row_span, column_span) in enumerate(regions):
        masks[index, row_span, column_span] = 1
    masks[2] = (masks[0] + masks[1] == 0).float()
    covered_h, covered_w = _cover_size(height, width, video_size)
    covered = F.interpolate(masks[None], size=(covered_h, covered_w), mode="nearest")[0]
    top, start = _centre(covered_h, video_size[0]), _centre(covered_w, video_size[1])
    cropped = covered[:, top : top + video_size[0], start : start + video_size[1]]
    shrunk = F.interpolate(cropped[None], size=latent_size, mode="nearest")[0]
    return (shrunk > 0).float()
