"""One portrait's precomputed rig, and the per-frame work: sum the bases, remap once, paint the
mouth's inside.

Mouth and eye motion are composed under the head motion (the lips' tear line travels with the
head), by moving each small expression field rigidly with the head before adding it to the map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from model.lite import mesh_indices as mesh
from model.lite.basis import Basis
from model.lite.eye_rig import EyeRig
from model.lite.head_rig import HeadRig
from model.lite.landmarks import FaceLandmarks
from model.lite.mouth_interior import MouthColours, MouthInteriorPainter
from model.lite.mouth_rig import MouthRig, Refit, close_mouth, resting_smile, teeth_between_lips

# below this jaw drop (px) the lips still touch and there is no inside to paint
MIN_PAINTED_OPENING = 0.3


@dataclasses.dataclass(frozen=True)
class FramePose:
    opening: float  # jaw, 0..1
    spread: float  # lips, -1 (rounded) .. +1 (spread)
    blink: float  # eyelids, 0 open .. 1 closed
    shift_x: float  # head, px
    shift_y: float
    roll: float  # head, radians


@dataclasses.dataclass(frozen=True)
class PortraitRig:
    """Everything a frame needs, computed once per portrait (this is `PreparedPortrait.features`)."""

    image: np.ndarray  # the portrait with its lips closed, (H, W, 3) uint8
    points: np.ndarray  # its face mesh (468, 2)
    identity: np.ndarray  # (H, W, 2) float32 pixel coordinates
    mouth: MouthRig
    jaw: Basis
    lip_spread: Basis
    blinks: tuple[Basis, ...]
    head: HeadRig
    head_bases: tuple[Basis, Basis, Basis]
    painter: MouthInteriorPainter

    @classmethod
    def build(
        cls, image: np.ndarray, landmarks: FaceLandmarks,
        others: Sequence[FaceLandmarks] = (), refit: Refit | None = None,
    ) -> PortraitRig:
        """The rig of the face `landmarks`; the faces `others` stay still. `refit` re-runs the
        face mesh, so that a mouth open wide is closed in as many passes as it takes."""
        height, width = image.shape[:2]
        colours = MouthColours.sample(image, landmarks.points)
        smiling = resting_smile(image, landmarks.points)
        if smiling is None:
            # the mesh of a smile closed once still sees its teeth as a gap: no further passes
            teeth = teeth_between_lips(image, landmarks.points)
            closed, points = close_mouth(image, landmarks.points, None if teeth else refit)
        else:
            closed, points = image, smiling
        mouth = MouthRig.from_points(points)
        jaw, lip_spread = mouth.bases(height, width)
        eyes = (
            EyeRig.from_points(points[mesh.EYE_A_UPPER], points[mesh.EYE_A_LOWER], points[mesh.BROW_A]),
            EyeRig.from_points(points[mesh.EYE_B_UPPER], points[mesh.EYE_B_LOWER], points[mesh.BROW_B]),
        )
        head = HeadRig.from_points(points, still=tuple(face.points for face in others))
        xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        return cls(
            image=closed,
            points=points,
            identity=np.stack([xs, ys], axis=-1),
            mouth=mouth,
            jaw=jaw,
            lip_spread=lip_spread,
            blinks=tuple(eye.basis(height, width) for eye in eyes),
            head=head,
            head_bases=head.bases(height, width),
            painter=MouthInteriorPainter(
                frame=mouth.frame,
                half_width=mouth.half_width,
                inner_corner_u=mouth.inner_corner_u,
                max_opening=mouth.max_opening,
                colours=colours,
                own_teeth=smiling is not None,
            ),
        )


class FrameRenderer:
    def __init__(self, rig: PortraitRig) -> None:
        self.rig = rig
        self._map = np.empty_like(rig.identity)

    def render(self, pose: FramePose, out: np.ndarray) -> None:
        """Draw one frame into `out` ((H, W, 3) uint8)."""
        rig = self.rig
        sampling = self._map
        np.copyto(sampling, rig.identity)
        for basis, amount in zip(rig.head_bases, (pose.shift_x, pose.shift_y, pose.roll), strict=True):
            basis.add_to(sampling[basis.region.slices], amount)

        head_to_rest = self._head_inverse(pose)
        opening_px = pose.opening * rig.mouth.max_opening
        self._add_moved(sampling, ((rig.jaw, opening_px), (rig.lip_spread, pose.spread)), head_to_rest)
        for blink in rig.blinks:
            self._add_moved(sampling, ((blink, pose.blink),), head_to_rest)

        cv2.remap(rig.image, sampling, None, cv2.INTER_LINEAR, dst=out,
                  borderMode=cv2.BORDER_REPLICATE)
        if opening_px >= MIN_PAINTED_OPENING:
            upper, lower = rig.mouth.inner_lip_contours(rig.points, opening_px, pose.spread)
            move = (pose.shift_x, pose.shift_y, pose.roll)
            rig.painter.paint(out, rig.head.move(upper, *move), rig.head.move(lower, *move))

    def _head_inverse(self, pose: FramePose) -> np.ndarray:
        """2x3 affine from output pixels to where they were before the (small) head motion."""
        pivot = self.rig.head.pivot
        turn = np.array([[0.0, -pose.roll], [pose.roll, 0.0]])
        linear = np.eye(2) - turn
        offset = -np.array([pose.shift_x, pose.shift_y]) + turn @ pivot
        return np.hstack([linear, offset[:, None]])

    @staticmethod
    def _add_moved(
        sampling: np.ndarray, weighted: tuple[tuple[Basis, float], ...], head_to_rest: np.ndarray
    ) -> None:
        """Add bases sharing one region, carried along by the head motion."""
        if all(amount == 0.0 for _, amount in weighted):
            return
        region = weighted[0][0].region
        field = np.zeros_like(weighted[0][0].field)
        for basis, amount in weighted:
            basis.add_to(field, amount)
        origin = np.array([region.x0, region.y0], dtype=np.float64)
        local = head_to_rest.copy()
        local[:, 2] = head_to_rest[:, :2] @ origin + head_to_rest[:, 2] - origin
        height, width = field.shape[:2]
        moved = cv2.warpAffine(field, local, (width, height),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        view = sampling[region.slices]
        cv2.add(view, moved, dst=view)
