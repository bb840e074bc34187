"""Blinks: the upper eyelid slides down onto the lower one.

At full closure the output pixels inside the eye show the lid skin from between the lash line and
the brow, stretched down; the field tears along the lower lid, so the lash line comes to rest
exactly there.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from model.lite.basis import Basis
from model.lite.face_frame import FaceFrame, Region, contour_profile

# must stay below lid_reach / lid opening (>= 2.5) or the map would fold under the brow
LID_STRETCH_POWER = 1.8
LID_EDGE_MARGIN = 0.15


@dataclasses.dataclass(frozen=True)
class EyeRig:
    frame: FaceFrame
    half_width: float
    upper_u: np.ndarray
    upper_v: np.ndarray
    lower_u: np.ndarray
    lower_v: np.ndarray
    lid_reach: float  # px from the lower lid up to where the lid skin stops stretching

    @classmethod
    def from_points(
        cls, upper_lid: np.ndarray, lower_lid: np.ndarray, brow: np.ndarray
    ) -> EyeRig:
        first, last = upper_lid[0], upper_lid[-1]
        if last[0] < first[0]:
            first, last = last, first
        frame = FaceFrame.from_axis((first + last) / 2, last - first)
        half_width = float(np.linalg.norm(last - first) / 2)
        upper_u, upper_v = contour_profile(frame, upper_lid, half_width)
        lower_u, lower_v = contour_profile(frame, lower_lid, half_width)
        _, brow_v = frame.to_local(brow)
        lower_mid = float(np.interp(0.0, lower_u, lower_v))
        opening = lower_mid - float(np.interp(0.0, upper_u, upper_v))
        # stop at the brow, but always leave room for the lid to stretch without folding
        reach = max(0.85 * (lower_mid - float(brow_v.max())), 2.5 * opening, 2.0)
        return cls(frame, half_width, upper_u, upper_v, lower_u, lower_v, reach)

    def opening(self, u: np.ndarray) -> np.ndarray:
        """Lid gap in px across the eye; zero beyond the corners."""
        upper = np.interp(u, self.upper_u, self.upper_v)
        lower = np.interp(u, self.lower_u, self.lower_v)
        inside = np.abs(u) < 1.0
        return np.where(inside, np.clip(lower - upper, 0.0, None), 0.0)

    def basis(self, height: int, width: int) -> Basis:
        """Backward map of a full blink."""
        reach_u = 1.15 * self.half_width
        top = float(self.lower_v.min()) - self.lid_reach - 2
        bottom = float(self.lower_v.max()) + 2
        corners = [self.frame.origin + self.frame.to_image(x, y)
                   for x in (-reach_u, reach_u) for y in (top, bottom)]
        region = Region.around(np.array(corners), height, width)
        x, v = self.frame.to_local(region.pixel_centers())
        u = x / self.half_width
        # the mesh's lower lid sits a little inside the lid's edge: close just below it
        lid_edge = np.interp(u, self.lower_u, self.lower_v) + LID_EDGE_MARGIN * self.opening(u)
        above_lower_lid = v - lid_edge
        # flat at the lid, steep towards the brow: the lash line slides down without smearing
        stretch = 1.0 - np.clip(-above_lower_lid / self.lid_reach, 0.0, 1.0) ** LID_STRETCH_POWER
        pull = np.where(above_lower_lid <= 0, self.opening(u) * stretch, 0.0)
        return Basis.from_local(region, np.zeros_like(pull), -pull, self.frame.right, self.frame.down)
