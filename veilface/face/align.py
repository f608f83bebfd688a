"""Five-point similarity alignment onto the ArcFace 112x112 template."""

from __future__ import annotations

import cv2
import numpy as np

#: Where the eyes, nose tip and mouth corners sit in the 112x112 crops ArcFace-style recognisers expect.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def align_face(img: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp the face whose five ``landmarks`` (x, y) are given onto the template, as a ``size`` square.

    The similarity transform (rotation, uniform scale, translation) is fitted with least median of
    squares, so one badly placed point (common on profile faces) does not drag the others. Raises
    ``ValueError`` when the points are degenerate (all at the same place).
    """
    template = ARCFACE_TEMPLATE * (size / 112.0)
    points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(points, template, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("landmarks do not define a similarity transform")
    return cv2.warpAffine(img, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
