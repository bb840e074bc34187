"""The inside of an open mouth: a dark oral cavity, the edge of the upper teeth, a hint of the
lower teeth and the tongue, painted into the gap between the inner lips.

Colours come from the portrait itself (its lips, its skin's brightness, its own teeth when they
show), so the interior sits in the photo's light instead of looking pasted on.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from model.lite import mesh_indices as mesh
from model.lite.face_frame import FaceFrame, smoothstep

NEUTRAL_TEETH = np.array([236.0, 229.0, 214.0])
# visible height of the upper incisors, in half mouth widths
TEETH_HEIGHT = 0.26
POLYGON_SHIFT = 3  # fillPoly's sub-pixel bits
SEAM_COVER_PX = 0.7
# gaps between the upper front teeth, in half mouth widths from the middle
TOOTH_EDGES = np.array([0.0, 0.3, 0.56, 0.78])


@dataclasses.dataclass(frozen=True)
class MouthColours:
    cavity: np.ndarray
    teeth: np.ndarray
    tongue: np.ndarray

    @classmethod
    def sample(cls, image: np.ndarray, points: np.ndarray) -> MouthColours:
        """Colours for one portrait, taken before its mouth is closed."""
        outer = np.concatenate([points[mesh.LIPS_OUTER_UPPER], points[mesh.LIPS_OUTER_LOWER][::-1]])
        inner = np.concatenate([points[mesh.LIPS_INNER_UPPER], points[mesh.LIPS_INNER_LOWER][::-1]])
        lips_mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(lips_mask, [np.round(outer).astype(np.int32)], 1)
        gap_mask = np.zeros_like(lips_mask)
        cv2.fillPoly(gap_mask, [np.round(inner).astype(np.int32)], 1)
        lip_pixels = image[(lips_mask == 1) & (gap_mask == 0)].astype(np.float64)
        lip = np.median(lip_pixels, axis=0) if len(lip_pixels) else np.array([150.0, 80.0, 80.0])

        oval_mask = np.zeros_like(lips_mask)
        cv2.fillPoly(oval_mask, [np.round(points[mesh.FACE_OVAL]).astype(np.int32)], 1)
        skin = image[(oval_mask == 1) & (lips_mask == 0)].astype(np.float64)
        skin_level = float(np.median(skin.mean(axis=1))) if len(skin) else 160.0

        teeth = NEUTRAL_TEETH * float(np.clip(skin_level / 170.0, 0.55, 1.0))
        gap_pixels = image[gap_mask == 1].astype(np.float64)
        if len(gap_pixels) >= 20:
            # the portrait shows its own teeth: their colour is the brightest part of the gap
            brightness = gap_pixels.mean(axis=1)
            bright = gap_pixels[brightness >= np.percentile(brightness, 80)]
            if bright.mean() > 1.1 * skin_level:
                teeth = np.median(bright, axis=0)
        return cls(
            cavity=lip * 0.3 + np.array([4.0, 1.0, 1.0]),
            teeth=np.clip(teeth * 0.88, 0.0, 235.0),
            tongue=lip * np.array([0.78, 0.5, 0.52]),
        )


@dataclasses.dataclass(frozen=True)
class MouthInteriorPainter:
    frame: FaceFrame  # the mouth's frame; only its axes are used
    half_width: float
    inner_corner_u: float
    max_opening: float
    colours: MouthColours
    # the photo's own teeth rest above and below the gap (a smile): only the dark inside is painted
    own_teeth: bool = False

    def paint(self, image: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> None:
        """Paint the gap between the inner lip contours (each (n, 2), corner to corner) in place."""
        height, width = image.shape[:2]
        # reach a little over the upper lip's edge, where the closed lips' dark seam still shows
        gap = np.linalg.norm(lower - upper, axis=1, keepdims=True)
        upper = upper - np.minimum(gap / 3.0, SEAM_COVER_PX) * self.frame.down
        polygon = np.concatenate([upper, lower[::-1]])
        x0, y0 = np.maximum(np.floor(polygon.min(axis=0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(polygon.max(axis=0)).astype(int) + 3, [width, height])
        if x1 <= x0 or y1 <= y0:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        scaled = np.round((polygon - [x0, y0]) * (1 << POLYGON_SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, [scaled], 255, lineType=cv2.LINE_AA, shift=POLYGON_SHIFT)
        if not mask.any():
            return
        alpha = (mask.astype(np.float32) / 255.0)[..., None]

        xs, ys = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
        pixels = np.stack([xs, ys], axis=-1)
        colour = self._interior(pixels, upper, lower)
        patch = image[y0:y1, x0:x1].astype(np.float32)
        image[y0:y1, x0:x1] = np.clip(patch + alpha * (colour - patch) + 0.5, 0, 255).astype(np.uint8)

    def _interior(self, pixels: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
        # centred between the corners as they are in this frame, so the teeth follow the head
        frame = FaceFrame((upper[0] + upper[-1]) / 2, self.frame.right)
        x, v = frame.to_local(pixels)
        u = x / self.half_width
        upper_x, upper_v = frame.to_local(upper)
        lower_x, lower_v = frame.to_local(lower)
        top = np.interp(x, *_sorted(upper_x, upper_v))
        bottom = np.interp(x, *_sorted(lower_x, lower_v))
        gap = np.clip(bottom - top, 0.0, None)
        below_top = v - top
        above_bottom = bottom - v
        across = np.abs(u) / self.inner_corner_u
        colours = self.colours

        # the cavity darkens towards the throat and the cheeks; the inner lower lip stays red
        depth = smoothstep(np.minimum(below_top, above_bottom) / 2.5)
        cavity = colours.cavity * (1.0 - 0.25 * depth - 0.2 * across**2)[..., None]
        inner_lip = 0.4 * (1.0 - smoothstep(above_bottom / 2.0))

        teeth_band = np.minimum(TEETH_HEIGHT * self.half_width, 0.55 * gap)
        upper_teeth = smoothstep(teeth_band - below_top + 0.5) * (1.0 - smoothstep((across - 0.55) / 0.4))
        down_the_band = np.clip(below_top / np.maximum(teeth_band, 1.0), 0.0, 1.0)
        edge_distance = np.abs(np.abs(u)[..., None] - TOOTH_EDGES).min(axis=-1) * self.half_width
        tooth_gaps = 1.0 - 0.12 * (1.0 - smoothstep(edge_distance / 0.8))
        teeth_shade = (1.0 - 0.45 * across**2 - 0.2 * down_the_band) * tooth_gaps * (
            0.8 + 0.2 * smoothstep(below_top / 1.5))
        teeth = colours.teeth * teeth_shade[..., None]

        lower_band = np.minimum(0.5 * TEETH_HEIGHT * self.half_width, 0.2 * gap)
        lower_teeth = 0.5 * smoothstep(lower_band - above_bottom + 0.5) * (
            1.0 - smoothstep((across - 0.25) / 0.3))

        wide_open = smoothstep((gap - 0.4 * self.max_opening) / (0.35 * self.max_opening))
        tongue = wide_open * np.exp(-((u / 0.55) ** 2)) * smoothstep(
            (below_top - 0.5 * gap) / (0.25 * gap + 1.0))

        colour = cavity
        colour = colour + tongue[..., None] * (colours.tongue * 0.8 - colour)
        if self.own_teeth:
            return colour.astype(np.float32)
        colour = colour + inner_lip[..., None] * (colours.tongue - colour)
        colour = colour + lower_teeth[..., None] * (teeth * 0.75 - colour)
        colour = colour + upper_teeth[..., None] * (teeth - colour)
        return colour.astype(np.float32)


def _sorted(x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(x)
    return x[order], v[order]
