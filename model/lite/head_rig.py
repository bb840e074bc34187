"""Head motion: a small rigid shift and roll of the head, fading out into the neck and background."""

from __future__ import annotations

import dataclasses

import numpy as np

from model.lite import mesh_indices as mesh
from model.lite.basis import Basis
from model.lite.face_frame import Region, smoothstep

# The head ellipse, relative to the face outline's box: hair above and beside the face moves too.
HEAD_RADIUS_X = 0.8
HEAD_RADIUS_Y = 0.72
HEAD_RAISE = 0.12
FEATHER = 0.6
# Another face near the animated one is held still: an ellipse around its outline (relative to
# its box), fading over this share of its radius.
STILL_RADIUS = 0.65
STILL_FEATHER = 0.3


@dataclasses.dataclass(frozen=True)
class Ellipse:
    centre: np.ndarray
    radii: np.ndarray

    def radius(self, pixels: np.ndarray) -> np.ndarray:
        """Distance from the centre in units of the radii (1 on the outline)."""
        return np.sqrt((((pixels - self.centre) / self.radii) ** 2).sum(axis=-1))

    def inside(self, pixels: np.ndarray, feather: float) -> np.ndarray:
        """1 inside, fading to 0 at (1 + feather) radii."""
        return 1.0 - smoothstep((self.radius(pixels) - 1.0) / feather)

    def contains(self, point: np.ndarray) -> bool:
        return bool(self.radius(np.asarray(point, dtype=np.float64)) <= 1.0)


@dataclasses.dataclass(frozen=True)
class HeadRig:
    centre: np.ndarray
    radii: np.ndarray
    pivot: np.ndarray  # the neck, which the roll turns around
    face_height: float
    still: tuple[Ellipse, ...] = ()  # other faces, which do not move

    @classmethod
    def from_points(cls, points: np.ndarray, still: tuple[np.ndarray, ...] = ()) -> HeadRig:
        """The head of the face mesh `points`; `still` are the meshes of other faces."""
        oval = points[mesh.FACE_OVAL]
        lo, hi = oval.min(axis=0), oval.max(axis=0)
        size = hi - lo
        centre = (lo + hi) / 2 - np.array([0.0, HEAD_RAISE * size[1]])
        radii = np.array([HEAD_RADIUS_X * size[0], HEAD_RADIUS_Y * size[1]])
        pivot = points[mesh.CHIN] + np.array([0.0, 0.25 * size[1]])
        head = Ellipse(centre, radii)
        # a face inside this head's own ellipse (cheek to cheek) cannot be held still without
        # tearing this one: it moves along
        others = (still_ellipse(other) for other in still)
        held = tuple(other for other in others if not head.contains(other.centre))
        return cls(centre, radii, pivot.astype(np.float64), float(size[1]), held)

    def weight(self, pixels: np.ndarray) -> np.ndarray:
        weight = Ellipse(self.centre, self.radii).inside(pixels, FEATHER)
        for other in self.still:
            weight = weight * (1.0 - other.inside(pixels, STILL_FEATHER))
        return weight

    def bases(self, height: int, width: int) -> tuple[Basis, Basis, Basis]:
        """Backward maps of a 1 px shift right, a 1 px shift down, and a 1 radian roll."""
        reach = self.radii * (1.0 + FEATHER)
        region = Region.around(np.array([self.centre - reach, self.centre + reach]), height, width)
        pixels = region.pixel_centers()
        weight = self.weight(pixels)[..., None]
        rel = pixels - self.pivot
        turn = np.stack([-rel[..., 1], rel[..., 0]], axis=-1)
        along_x = np.broadcast_to(np.array([1.0, 0.0]), pixels.shape)
        along_y = np.broadcast_to(np.array([0.0, 1.0]), pixels.shape)
        shift_x, shift_y, roll = (
            Basis(region, (-weight * motion).astype(np.float32))
            for motion in (along_x, along_y, turn)
        )
        return shift_x, shift_y, roll

    def move(self, points: np.ndarray, shift_x: float, shift_y: float, roll: float) -> np.ndarray:
        """Where points inside the head go under the motion (they move rigidly)."""
        rel = points - self.pivot
        turn = np.stack([-rel[..., 1], rel[..., 0]], axis=-1)
        return points + np.array([shift_x, shift_y]) + roll * turn


def still_ellipse(points: np.ndarray) -> Ellipse:
    oval = points[mesh.FACE_OVAL]
    lo, hi = oval.min(axis=0), oval.max(axis=0)
    return Ellipse((lo + hi) / 2, STILL_RADIUS * (hi - lo))
