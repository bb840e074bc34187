"""Face-aligned coordinates: the deformations are shaped along the face's own axes, so a portrait
whose head is tilted opens its mouth along the tilt."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt


@dataclasses.dataclass(frozen=True)
class FaceFrame:
    """An origin and the face's unit `right` and `down` directions, in image pixels."""

    origin: np.ndarray
    right: np.ndarray

    @property
    def down(self) -> np.ndarray:
        return np.array([-self.right[1], self.right[0]])

    @classmethod
    def from_axis(cls, origin: np.ndarray, towards_right: np.ndarray) -> FaceFrame:
        direction = np.asarray(towards_right, dtype=np.float64)
        return cls(np.asarray(origin, dtype=np.float64), direction / np.linalg.norm(direction))

    def to_local(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(along right, along down) in pixels for points (..., 2)."""
        rel = np.asarray(points, dtype=np.float64) - self.origin
        return rel @ self.right, rel @ self.down

    def to_image(self, along_right: npt.ArrayLike, along_down: npt.ArrayLike) -> np.ndarray:
        """Image vectors (..., 2) for local vector components."""
        return (
            np.asarray(along_right)[..., None] * self.right
            + np.asarray(along_down)[..., None] * self.down
        )


@dataclasses.dataclass(frozen=True)
class Region:
    """A rectangle of the image, [y0, y1) x [x0, x1), where a deformation is non-zero."""

    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def around(cls, corners: np.ndarray, height: int, width: int) -> Region:
        lo = np.floor(np.min(corners, axis=0)).astype(int)
        hi = np.ceil(np.max(corners, axis=0)).astype(int) + 1
        return cls(
            y0=int(np.clip(lo[1], 0, height)), y1=int(np.clip(hi[1], 0, height)),
            x0=int(np.clip(lo[0], 0, width)), x1=int(np.clip(hi[0], 0, width)),
        )

    def union(self, other: Region) -> Region:
        return Region(min(self.y0, other.y0), max(self.y1, other.y1),
                      min(self.x0, other.x0), max(self.x1, other.x1))

    @property
    def empty(self) -> bool:
        return self.y1 <= self.y0 or self.x1 <= self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def pixel_centers(self) -> np.ndarray:
        """(h, w, 2) image coordinates (x, y) of the region's pixels."""
        xs, ys = np.meshgrid(
            np.arange(self.x0, self.x1, dtype=np.float64),
            np.arange(self.y0, self.y1, dtype=np.float64),
        )
        return np.stack([xs, ys], axis=-1)


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def contour_profile(
    frame: FaceFrame, contour: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """The contour as a function along the frame's right axis: (u / scale, v) samples sorted by u."""
    u, v = frame.to_local(contour)
    order = np.argsort(u)
    return u[order] / scale, v[order]
