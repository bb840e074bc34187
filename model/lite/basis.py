"""A displacement basis field: one unit of one motion, precomputed once per portrait.

Fields are backward maps: at each output pixel, the offset to the source pixel it shows, per
unit of the motion's coefficient. A frame's sampling map is the identity plus a weighted sum of
bases, so per-frame work is a few multiply-adds and one remap.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from model.lite.face_frame import Region


@dataclasses.dataclass(frozen=True)
class Basis:
    region: Region
    field: np.ndarray  # (h, w, 2) float32, x then y offsets

    @classmethod
    def from_local(
        cls, region: Region, along_right: np.ndarray, along_down: np.ndarray,
        right: np.ndarray, down: np.ndarray,
    ) -> Basis:
        field = along_right[..., None] * right + along_down[..., None] * down
        return cls(region, field.astype(np.float32))

    def add_to(self, target: np.ndarray, coefficient: float) -> None:
        """target += coefficient * field, in place; `target` has the region's shape."""
        if coefficient != 0.0:
            cv2.scaleAdd(self.field, coefficient, target, dst=target)
