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


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``
    with the least sum of squared distances (Umeyama's closed form, as ``skimage``'s
    ``SimilarityTransform.estimate`` computes it).

    Raises ``ValueError`` when the source points are degenerate (all at the same place).
    """
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    variance = float(np.mean(np.sum(src_centred**2, axis=1)))
    if variance < 1e-12:
        raise ValueError("landmarks do not define a similarity transform")
    u, singular, vt = np.linalg.svd(dst_centred.T @ src_centred / len(src))
    reflection = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ reflection @ vt
    scale = float(np.sum(singular * np.diag(reflection))) / variance
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(img: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp the face whose five ``landmarks`` (x, y) are given onto the template, as a ``size`` square.

    The transform is the least-squares similarity over all five points: the alignment the shipped
    recognisers were trained with (insightface's ``norm_crop``). A robust fit that drops the worst
    points (least median of squares) looked safer for profile faces but lost 0.8 point of CFP-FP
    accuracy (``docs/accuracy.md``). Raises ``ValueError`` when the points are degenerate.
    """
    template = ARCFACE_TEMPLATE * (size / 112.0)
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float32).reshape(5, 2), template)
    return cv2.warpAffine(img, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
