"""The mouth: jaw drop (opening) and lip-corner spread (width), as displacement bases.

Everything is measured in the face frame centred between the lip corners: `u` runs along the
face's right axis in units of half the mouth width, `vp` is the distance below the lips' contact
line (the upper inner lip contour). The field tears along that line inside the mouth: above it the
upper lip barely rises, below it the lower lip, chin and jaw drop. The gap that opens is covered
by the rendered oral cavity (see `mouth_interior`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import cv2
import numpy as np

from model.lite import mesh_indices as mesh
from model.lite.basis import Basis
from model.lite.face_frame import FaceFrame, Region, contour_profile, smoothstep

# How far the upper lip rises, as a fraction of the lower lip's drop.
UPPER_LIP_RISE = 0.12
# Largest jaw drop as a fraction of the mouth width, and of the lip-to-chin distance (beyond the
# latter the backward map would fold over below the chin).
MAX_OPENING_PER_MOUTH_WIDTH = 0.22
MAX_OPENING_PER_CHIN_DISTANCE = 0.55
# Lip-corner travel at width coefficient +1 / -1, in half mouth widths.
CORNER_SPREAD = 0.14
SPREAD_SIGMA = 1.1


@dataclasses.dataclass(frozen=True)
class MouthRig:
    frame: FaceFrame
    half_width: float  # px, outer corner to centre
    inner_corner_u: float  # the inner lip's half span, in half widths
    line_u: np.ndarray  # the contact line, sampled along u (sorted)
    line_v: np.ndarray
    chin_distance: float  # px from the contact line (at the centre) to the chin
    upper_lip_height: float  # px

    @classmethod
    def from_points(cls, points: np.ndarray) -> MouthRig:
        left, right = points[mesh.LIPS_OUTER_UPPER[0]], points[mesh.LIPS_OUTER_UPPER[-1]]
        frame = FaceFrame.from_axis((left + right) / 2, right - left)
        half_width = float(np.linalg.norm(right - left) / 2)
        line_u, line_v = contour_profile(frame, points[mesh.LIPS_INNER_UPPER], half_width)
        centre_line = float(np.interp(0.0, line_u, line_v))
        _, chin_v = frame.to_local(points[mesh.CHIN])
        _, lip_top_v = frame.to_local(points[mesh.LIPS_OUTER_UPPER[5]])
        return cls(
            frame=frame,
            half_width=half_width,
            inner_corner_u=float(max(np.abs(line_u[[0, -1]]).min(), 0.3)),
            line_u=line_u,
            line_v=line_v,
            chin_distance=max(float(chin_v) - centre_line, 0.5 * half_width),
            upper_lip_height=max(centre_line - float(lip_top_v), 2.0),
        )

    @property
    def max_opening(self) -> float:
        """The jaw drop, in px, at opening 1."""
        return min(
            MAX_OPENING_PER_MOUTH_WIDTH * 2 * self.half_width,
            MAX_OPENING_PER_CHIN_DISTANCE * self.chin_distance,
        )

    def local(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u in half widths, distance below the contact line in px)."""
        x, v = self.frame.to_local(points)
        u = x / self.half_width
        return u, v - np.interp(u, self.line_u, self.line_v)

    def lower_lip_share(self, u: np.ndarray) -> np.ndarray:
        """How much of the jaw drop the lower lip follows across the mouth: 1 mid, 0 at corners."""
        return np.clip(1.0 - (u / self.inner_corner_u) ** 2, 0.0, 1.0) ** 0.8

    def jaw_weight(self, u: np.ndarray, vp: np.ndarray, below: np.ndarray) -> np.ndarray:
        """Downward travel per px of jaw drop, for points below or above the contact line."""
        share = self.lower_lip_share(u)
        chin = self.chin_distance
        below_chin_fade = 1.0 - smoothstep((vp - chin) / (0.9 * chin))
        cheek = (1.0 - smoothstep((np.abs(u) - 1.3) / 1.3)) * smoothstep(vp / chin) * below_chin_fade
        lower = share * below_chin_fade + (1.0 - share) * cheek
        upper = -UPPER_LIP_RISE * share * np.exp(-((vp / (1.5 * self.upper_lip_height)) ** 2))
        return np.where(below, lower, upper)

    def spread_weight(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Rightward travel (in px) of the lips and cheeks at width coefficient 1."""
        falloff = np.exp(-0.5 * (u / SPREAD_SIGMA) ** 2) * np.exp(-((v / (0.9 * self.half_width)) ** 2))
        at_corner = np.exp(-0.5 / SPREAD_SIGMA**2)
        return CORNER_SPREAD * self.half_width * u * falloff / at_corner

    def region(self, height: int, width: int) -> Region:
        reach = 2.7 * self.half_width
        top = -2.0 * self.half_width
        bottom = float(self.line_v.max()) + 1.95 * self.chin_distance
        corners = [self.frame.origin + self.frame.to_image(x, y)
                   for x in (-reach, reach) for y in (top, bottom)]
        return Region.around(np.array(corners), height, width)

    def bases(self, height: int, width: int) -> tuple[Basis, Basis]:
        """(jaw drop per px, lip spread per unit width coefficient) as backward maps."""
        region = self.region(height, width)
        pixels = region.pixel_centers()
        u, vp = self.local(pixels)
        _, v = self.frame.to_local(pixels)
        jaw = self.jaw_weight(u, vp, below=vp > 0)
        spread = self.spread_weight(u, v)
        zeros = np.zeros_like(jaw)
        right, down = self.frame.right, self.frame.down
        return (
            Basis.from_local(region, zeros, -jaw, right, down),
            Basis.from_local(region, -spread, zeros, right, down),
        )

    def inner_lip_contours(
        self, points: np.ndarray, opening_px: float, spread: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The inner lips' upper and lower contours (11, 2) each, after opening and spreading."""
        contact = points[mesh.LIPS_INNER_UPPER].astype(np.float64)
        u, _ = self.local(contact)
        _, v = self.frame.to_local(contact)
        zero = np.zeros_like(u)
        sideways = self.frame.to_image(spread * self.spread_weight(u, v), zero)
        upper = contact + sideways + self.frame.to_image(
            zero, opening_px * self.jaw_weight(u, zero, below=np.zeros(u.shape, bool)))
        lower = contact + sideways + self.frame.to_image(
            zero, opening_px * self.jaw_weight(u, zero, below=np.ones(u.shape, bool)))
        return upper, lower


# A mouth open wide (laughing, shouting) is measured too closed by the mesh model: on a jaw drop
# of a fifth of the face it placed the lower lip halfway up the open mouth, so one closing pass
# left the mouth half open. The lips are closed again, each time on a new mesh of the closed
# photo, while that mesh still sees a gap wider than this share of the mouth's width (a closed
# mouth measures 0.04 on the astronaut: the mesh never puts the inner lips exactly together),
# and while each pass still shrinks the measured gap by a fifth: a mesh that keeps seeing the
# same small gap (teeth between closed lips) is not followed into eating the lower lip.
MAX_CLOSING_PASSES = 3
CLOSED_GAP_PER_MOUTH_WIDTH = 0.055
STALLED_GAP_RATIO = 0.8
MIN_CLOSED_GAP_PX = 0.5

Refit = Callable[[np.ndarray, np.ndarray], "np.ndarray | None"]


def lip_gap(points: np.ndarray) -> tuple[float, float]:
    """The widest gap between the inner lips, and the mouth's width, in px."""
    rig = MouthRig.from_points(points)
    _, gap = rig.local(points[mesh.LIPS_INNER_LOWER])
    return float(max(gap.max(), 0.0)), 2.0 * rig.half_width


@dataclasses.dataclass(frozen=True)
class ClosingStep:
    """One pass of closing the lips: a backward map over `region` (absolute source coordinates)
    and the landmarks moved to where they show after it."""

    region: Region
    sampling: np.ndarray  # (h, w, 2) float32
    points: np.ndarray


def closing_step(points: np.ndarray, height: int, width: int) -> ClosingStep | None:
    """The lower lip brought up onto the upper one, or None when they already touch."""
    rig = MouthRig.from_points(points)
    lower_u, lower_vp = rig.local(points[mesh.LIPS_INNER_LOWER])
    order = np.argsort(lower_u)
    gap_u, gap = lower_u[order], np.clip(lower_vp[order], 0.0, None)
    if gap.max() < MIN_CLOSED_GAP_PX:
        return None
    # the lower lip (down to its outer edge) rides up by the whole gap; below it the lift fades
    # out before the chin, slowly enough that the map cannot fold
    _, lip_bottom = rig.local(points[mesh.LIPS_OUTER_LOWER[5]])
    hold = float(max(lip_bottom, gap.max()))
    fade = max(rig.chin_distance * 1.2 - hold, 2.0 * gap.max())

    def lift(u: np.ndarray, vp: np.ndarray) -> np.ndarray:
        span_gap = np.interp(u, gap_u, gap, left=0.0, right=0.0)
        return span_gap * (1.0 - smoothstep((vp - hold) / fade))

    region = rig.region(height, width)
    pixels = region.pixel_centers()
    u, vp = rig.local(pixels)
    lift_px = np.where(vp > 0, lift(u, vp), 0.0)
    sampling = (pixels + lift_px[..., None] * rig.frame.down).astype(np.float32)

    moved = points.astype(np.float64).copy()
    below = np.setdiff1d(np.arange(len(points)), np.concatenate(
        [mesh.LIPS_INNER_UPPER, mesh.LIPS_OUTER_UPPER]))
    # a source point p shows at q with q + lift(q) = p: a few fixed-point steps find q
    target = moved[below]
    for _ in range(6):
        qu, qvp = rig.local(moved[below])
        step = np.where(qvp > -1e-6, lift(qu, qvp), 0.0)
        moved[below] = target - step[:, None] * rig.frame.down
    # the lower inner lip lands exactly on the contact line
    moved[mesh.LIPS_INNER_LOWER[1:-1]] = points[mesh.LIPS_INNER_UPPER[1:-1]]
    return ClosingStep(region, sampling, moved.astype(np.float32))


# A smile shows its teeth with the jaw shut: the gap between its inner lips is teeth, not the
# dark of an open mouth. Measured by dlib's 68-point model on smiling photos at 320x320 (lip /
# loudness correlation, scripts/measure_lite_lips.py): closing such a mouth again and again on new
# meshes of the closed photo followed the mesh onto the teeth and ate the lower lip (-0.49 to 0.03
# on four of them). One pass keeps the lip while the gap is narrow (0.41, 0.85 and 0.91 below a
# fifth of the mouth's width); a wider smile closed in one pass stretches its chin and smears its
# lips (0.29, 0.34), while resting as it is, the jaw opening from where the teeth meet, it scores
# 0.90 and 0.77.
SMILE_MAX_DARK_SHARE = 0.35
DARK_PER_SKIN_LEVEL = 0.45
SMILE_REST_MIN_GAP_PER_MOUTH_WIDTH = 0.2
# where the upper teeth meet the lower, as a share of the gap from the upper inner lip: the upper
# incisors show more than the lower ones in a smile
TEETH_MEET_SHARE = 0.6


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def dark_share_of_gap(image: np.ndarray, points: np.ndarray) -> float:
    """Share of the pixels between the inner lips darker than the oral cavity's bound."""
    inner = np.concatenate([points[mesh.LIPS_INNER_UPPER], points[mesh.LIPS_INNER_LOWER][::-1]])
    outer = np.concatenate([points[mesh.LIPS_OUTER_UPPER], points[mesh.LIPS_OUTER_LOWER][::-1]])
    gap_mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(gap_mask, [np.round(inner).astype(np.int32)], 1)
    gap = image[gap_mask == 1]
    if len(gap) == 0:
        return 1.0
    face_mask = np.zeros_like(gap_mask)
    cv2.fillPoly(face_mask, [np.round(points[mesh.FACE_OVAL]).astype(np.int32)], 1)
    cv2.fillPoly(face_mask, [np.round(outer).astype(np.int32)], 0)
    skin = image[face_mask == 1]
    skin_level = float(np.median(_luma(skin))) if len(skin) else 160.0
    return float((_luma(gap) < DARK_PER_SKIN_LEVEL * skin_level).mean())


def teeth_between_lips(image: np.ndarray, points: np.ndarray) -> bool:
    """Whether the lips are parted over teeth (a smile), rather than closed or open onto the dark."""
    gap, mouth_width = lip_gap(points)
    return bool(gap >= CLOSED_GAP_PER_MOUTH_WIDTH * mouth_width
                and dark_share_of_gap(image, points) <= SMILE_MAX_DARK_SHARE)


def resting_smile(image: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """For a wide smile over shut teeth: the landmarks with both inner lip contours moved onto
    the line where the teeth meet (the line the jaw then opens along). None for any other mouth,
    which is closed instead (see `close_mouth`)."""
    gap, mouth_width = lip_gap(points)
    if gap < SMILE_REST_MIN_GAP_PER_MOUTH_WIDTH * mouth_width or not teeth_between_lips(image, points):
        return None
    upper = points[mesh.LIPS_INNER_UPPER].astype(np.float64)
    lower = points[mesh.LIPS_INNER_LOWER].astype(np.float64)
    meet = upper + TEETH_MEET_SHARE * (lower - upper)
    moved = points.astype(np.float64).copy()
    moved[mesh.LIPS_INNER_UPPER] = meet
    moved[mesh.LIPS_INNER_LOWER] = meet
    return moved.astype(points.dtype)


def close_mouth(
    image: np.ndarray, points: np.ndarray, refit: Refit | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The portrait with its lips brought together, and its landmarks moved to match.

    A portrait smiling with its teeth showing, or shouting, would otherwise never close its mouth
    in silence, and its own teeth would fight with the rendered mouth interior. `refit` re-runs
    the face mesh on a closed photo (from the landmarks given); without it one pass is made.
    The passes' maps are composed, so the photo is resampled once.
    """
    height, width = image.shape[:2]
    measured, _ = lip_gap(points)
    source: np.ndarray | None = None  # (H, W, 2) composed backward map, once there are passes
    touched: Region | None = None
    closed = image
    for done in range(MAX_CLOSING_PASSES):
        step = closing_step(points, height, width)
        if step is None:
            break
        if source is None:
            xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
            source = np.stack([xs, ys], axis=-1)
        view = source[step.region.slices]
        view[...] = cv2.remap(source, step.sampling, None, cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        touched = step.region if touched is None else touched.union(step.region)
        closed = image.copy()
        closed[touched.slices] = cv2.remap(image, source[touched.slices], None, cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REPLICATE)
        points = step.points
        if refit is None or done == MAX_CLOSING_PASSES - 1:
            break
        again = refit(closed, points)
        if again is None:
            break
        gap, mouth_width = lip_gap(again)
        if gap < CLOSED_GAP_PER_MOUTH_WIDTH * mouth_width or gap > STALLED_GAP_RATIO * measured:
            break
        points, measured = again, gap
    return closed, points
