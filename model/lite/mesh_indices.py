"""Indices into MediaPipe's 468-point face mesh for the parts this backend animates.

Contours run from the image-left corner to the image-right corner for an upright,
non-mirrored portrait.
"""

from __future__ import annotations

import numpy as np

LIPS_OUTER_UPPER = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291])
LIPS_OUTER_LOWER = np.array([61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291])
LIPS_INNER_UPPER = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308])
LIPS_INNER_LOWER = np.array([78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308])
LIPS_OUTER = np.unique(np.concatenate([LIPS_OUTER_UPPER, LIPS_OUTER_LOWER]))

# each eye: upper lid, lower lid (corner to corner), then the brow above it
EYE_A_UPPER = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133])
EYE_A_LOWER = np.array([33, 7, 163, 144, 145, 153, 154, 155, 133])
BROW_A = np.array([46, 53, 52, 65, 55, 70, 63, 105, 66, 107])
EYE_B_UPPER = np.array([362, 398, 384, 385, 386, 387, 388, 466, 263])
EYE_B_LOWER = np.array([362, 382, 381, 380, 374, 373, 390, 249, 263])
BROW_B = np.array([276, 283, 282, 295, 285, 300, 293, 334, 296, 336])

# the face outline, clockwise from the top of the forehead
FACE_OVAL = np.array([
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
])
CHIN = 152
FOREHEAD = 10
NOSE_TIP = 1
NOSE_BOTTOM = 2
# outer eye corners, image-left then image-right: they set the face's in-plane rotation
EYE_OUTER_CORNERS = (33, 263)
