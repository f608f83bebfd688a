"""Occluders for training, of the same family as the evaluation's but with shapes it does not use.

The evaluation's occluded sets (:mod:`veilface.eval.occlusion`) draw masks, sunglasses, rectangular
patches and hands. Training on those very shapes would measure how well the model learned the
generator rather than robustness to occlusion, so the trainer draws other shapes, placed the same way
(in the face frame of :class:`~veilface.eval.occlusion.FaceFrame`, built from the five landmarks) and
blended the same way (a feathered alpha mask), with its own seed:

* ``scarf``: a knitted band from just under the nose to below the chin, wider than the face;
* ``cap``: a cap's brim across the forehead with its shadow darkening the eyes;
* ``bar``: a long straight object (pen, microphone, strand of hair) across the face at any angle;
* ``blob``: an ellipse of flat colour or coarse noise (a cup, a phone) anywhere on the face.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from veilface.eval.occlusion import FaceFrame, stable_seed

KINDS = ("scarf", "cap", "bar", "blob")

#: The face box in face units (x in half-widths, y in eye-to-mouth distances from between the eyes).
_FACE_BOX = ((-1.05, -0.8), (1.05, 1.9))

_Drawer = Callable[[tuple[int, int], FaceFrame, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class TrainOccluder:
    """Draws one occluder of a kind chosen uniformly among ``kinds`` on a face image.

    ``occluder(img, landmarks, key=...)`` returns an occluded copy; the same ``(seed, key)`` always
    gives the same occluder, in any process and order.
    """

    def __init__(self, seed: int, kinds: Sequence[str] = KINDS):
        unknown = set(kinds) - set(_DRAWERS)
        if not kinds or unknown:
            raise ValueError(f"occlusion kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}")
        self.seed = seed
        self.kinds = tuple(kinds)

    def __call__(self, img: np.ndarray, landmarks: np.ndarray, *, key: str | int) -> np.ndarray:
        rng = np.random.default_rng(stable_seed(self.seed, key))
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        colour, alpha = _DRAWERS[kind](img.shape[:2], FaceFrame.from_landmarks(landmarks), rng)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=1.0)[..., None]
        blended = img.astype(np.float32) * (1.0 - alpha) + colour * alpha
        return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _layers(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((*shape, 3), dtype=np.float32), np.zeros(shape, dtype=np.float32)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _draw_scarf(shape: tuple[int, int], frame: FaceFrame, rng: np.random.Generator):
    layer, alpha = _layers(shape)
    top, half = rng.uniform(0.75, 1.05), rng.uniform(1.3, 1.6)
    xs = np.linspace(-half, half, 9)
    wave = top + rng.uniform(-0.08, 0.08, size=len(xs))
    outline = [*zip(xs, wave, strict=True), (half, 2.6), (-half, 2.6)]
    cv2.fillPoly(alpha, [frame.to_image(np.array(outline))], 1.0)
    base, stripe = _colour(rng), _colour(rng)
    layer[:] = base
    period = max(2, round(frame.d * rng.uniform(0.12, 0.25)))
    rows = (np.arange(shape[0])[:, None] + np.arange(shape[1])[None, :] * rng.choice([0, 1])) // period
    layer[rows % 2 == 1] = stripe
    return layer, alpha


def _draw_cap(shape: tuple[int, int], frame: FaceFrame, rng: np.random.Generator):
    layer, alpha = _layers(shape)
    brim = rng.uniform(-0.55, -0.25)
    half = rng.uniform(1.4, 1.8)
    crown = [(-half, brim), (half, brim), (half, -3.0), (-half, -3.0)]
    cv2.fillPoly(alpha, [frame.to_image(np.array(crown))], 1.0)
    shadow = np.zeros_like(alpha)
    depth = brim + rng.uniform(0.35, 0.7)
    cv2.fillPoly(
        shadow, [frame.to_image(np.array([(-half, brim), (half, brim), (half, depth), (-half, depth)]))], 1.0
    )
    layer[:] = _colour(rng)
    layer[shadow > 0] = 0.0
    return layer, np.maximum(alpha, shadow * rng.uniform(0.5, 0.8))


def _draw_bar(shape: tuple[int, int], frame: FaceFrame, rng: np.random.Generator):
    layer, alpha = _layers(shape)
    (left, top), (right, bottom) = _FACE_BOX
    centre = np.array([rng.uniform(left, right) * 0.6, rng.uniform(top, bottom) * 0.8])
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)]) * 3.0
    ends = frame.to_image(np.array([centre - direction, centre + direction]))
    thickness = max(2, round(frame.d * rng.uniform(0.15, 0.4)))
    cv2.line(alpha, tuple(ends[0]), tuple(ends[1]), 1.0, thickness)
    layer[:] = _colour(rng)
    return layer, alpha


def _draw_blob(shape: tuple[int, int], frame: FaceFrame, rng: np.random.Generator):
    layer, alpha = _layers(shape)
    (left, top), (right, bottom) = _FACE_BOX
    (centre,) = frame.to_image(np.array([(rng.uniform(left, right), rng.uniform(top, bottom))]))
    axes = (round(frame.w * rng.uniform(0.3, 0.6)), round(frame.d * rng.uniform(0.3, 0.6)))
    cv2.ellipse(alpha, tuple(centre), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    if rng.random() < 0.5:
        layer[:] = _colour(rng)
    else:
        noise = rng.integers(0, 256, size=(6, 6, 3)).astype(np.float32)
        layer[:] = cv2.resize(noise, shape[::-1], interpolation=cv2.INTER_NEAREST)
    return layer, alpha


_DRAWERS: dict[str, _Drawer] = {"scarf": _draw_scarf, "cap": _draw_cap, "bar": _draw_bar, "blob": _draw_blob}
