"""Quality gate: refuse faces too small or too blurred to be matched, and nothing else.

The thresholds are deliberately loose. Pose and occlusion are not judged here: profile and partly
hidden faces still match (see docs/face-pipeline.md for the rejection rates measured on LFW and CFP).
"""

from __future__ import annotations

import cv2
import numpy as np

from veilface.face.detect import Detection

#: Shorter side of the face box, in pixels, below which a face is refused.
MIN_FACE_SIZE = 32
#: Sharpness (see :func:`sharpness`) below which a face is refused. Every LFW and CFP photo scores
#: 48 or more; a Gaussian blur of sigma 8 px on an LFW photo (face about 100 px wide) gives under 25.
MIN_SHARPNESS = 25.0
#: Side of the grey square the face is resampled to before its sharpness is measured.
_SHARPNESS_SIDE = 64


def assess(
    img: np.ndarray,
    detection: Detection,
    *,
    min_face_size: float = MIN_FACE_SIZE,
    min_sharpness: float = MIN_SHARPNESS,
) -> str | None:
    """Return why the detected face cannot be used (``"face too small: ..."``, ``"face too blurred: ..."``),
    or ``None`` when it passes."""
    side = min(detection.box[2], detection.box[3])
    if side < min_face_size:
        return f"face too small: {side:.0f} px, at least {min_face_size:.0f} px needed"
    score = sharpness(img, detection.box)
    if score < min_sharpness:
        return f"face too blurred: sharpness {score:.1f}, at least {min_sharpness:.1f} needed"
    return None


def sharpness(img: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Variance of the Laplacian of the face box, resampled to 64x64 grey.

    Resampling first makes the measure depend on blur relative to the face, not on its size in pixels.
    """
    x, y, w, h = (round(v) for v in box)
    crop = img[max(y, 0) : y + h, max(x, 0) : x + w]
    if not crop.size:
        return 0.0
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    shrinking = min(grey.shape) > _SHARPNESS_SIDE
    grey = cv2.resize(
        grey,
        (_SHARPNESS_SIDE, _SHARPNESS_SIDE),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    return float(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F).var())
