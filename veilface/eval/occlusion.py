"""Seeded synthetic occlusions of faces: masks, sunglasses, random patches, hands.

Used to build the occluded evaluation sets (Occ-LFW, Occ-CFP-FP) and reusable as a training
augmentation::

    occluder = Occluder(seed=7, kinds=("mask", "hand"))
    occluded = occluder(bgr_image, landmarks, key="Aaron_Peirsol_0001").image

Shapes are placed in the face's own frame, built from the five detector landmarks (eyes, nose,
mouth corners as seen in the image): the origin is the middle of the eyes, "down" points to the middle
of the mouth and the unit lengths are the eye-to-mouth distance ``d`` (vertically) and the face
half-width ``w`` (horizontally, the inter-ocular distance, at least ``0.75 d`` so that profiles keep a
sensible size). Without landmarks, :func:`landmarks_from_geometry` assumes a centred upright face.

* ``mask``: a surgical/cloth mask from the middle of the nose to below the chin, cheek to cheek, with
  pleats and ear straps; light blue, white, black or grey.
* ``sunglasses``: two dark lenses over the eyes joined by a bridge, with temples: a band across the eyes.
* ``patch``: a rectangle of flat colour or blocky noise, 30-55% of the face box's width and height,
  anywhere inside the face box (brows to chin, cheek to cheek).
* ``hand``: a skin-toned palm with four fingers over the mouth, a cheek or the chin, rotated at random.

Every random choice comes from a generator derived from ``(seed, key)`` with a stable hash, so a given
image and key give the same occlusion in any process and any order; without a key, calls draw from one
stream seeded by ``seed`` (deterministic for a given call order). Edges are feathered by a small blur.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from veilface.face.align import ARCFACE_TEMPLATE

KINDS = ("mask", "sunglasses", "patch", "hand")

_MASK_COLOURS = ((235, 206, 160), (245, 245, 245), (35, 35, 35), (150, 150, 150))  # BGR
_LENS_COLOURS = ((20, 20, 20), (25, 35, 50), (40, 40, 30))
_SKIN_COLOURS = ((190, 215, 250), (140, 180, 225), (100, 140, 190), (60, 90, 130), (45, 60, 90))
#: Corners (left, top), (right, bottom) of the face box in face units: brows to chin, cheek to cheek.
_FACE_BOX = ((-1.05, -0.8), (1.05, 1.9))


@dataclass(frozen=True)
class Occlusion:
    """An occluded copy of an image and the kind of occluder drawn on it."""

    image: np.ndarray
    kind: str


@dataclass(frozen=True)
class FaceFrame:
    """The face's frame in image pixels: ``origin`` between the eyes, unit vectors ``right`` and
    ``down``, half-width ``w`` and eye-to-mouth distance ``d``."""

    origin: np.ndarray
    right: np.ndarray
    down: np.ndarray
    w: float
    d: float

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray) -> FaceFrame:
        points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        eyes, mouth = points[:2].mean(axis=0), points[3:].mean(axis=0)
        d = max(float(np.linalg.norm(mouth - eyes)), 1.0)
        down = (mouth - eyes) / d
        right = np.array([-down[1], down[0]])
        w = max(float(np.linalg.norm(points[1] - points[0])), 0.75 * d)
        return cls(origin=eyes, right=right, down=down, w=w, d=d)

    def to_image(self, local: np.ndarray) -> np.ndarray:
        """Points ``(x, y)`` in face units (``x`` in ``w``, ``y`` in ``d``) to integer image pixels."""
        local = np.asarray(local, dtype=np.float64).reshape(-1, 2)
        pixels = (
            self.origin
            + np.outer(local[:, 0] * self.w, self.right)
            + np.outer(local[:, 1] * self.d, self.down)
        )
        return np.round(pixels).astype(np.int32)

    @property
    def angle(self) -> float:
        """Rotation of the face in degrees (0: upright), as OpenCV's ellipse angle expects."""
        return float(np.degrees(np.arctan2(self.right[1], self.right[0])))


def landmarks_from_geometry(shape: tuple[int, ...], face_fraction: float = 0.6) -> np.ndarray:
    """Landmarks of an upright face centred in an image of ``shape``, the ArcFace 112x112 template
    scaled to a centred square of ``face_fraction`` times the image's shorter side."""
    height, width = shape[:2]
    side = face_fraction * min(height, width)
    offset = np.array([(width - side) / 2, (height - side) / 2])
    return (ARCFACE_TEMPLATE * (side / 112.0) + offset).astype(np.float32)


def stable_seed(seed: int, key: str | int) -> np.random.SeedSequence:
    """A seed sequence fixed by ``seed`` and ``key`` alone (Python's ``hash`` varies between processes)."""
    digest = hashlib.blake2b(str(key).encode(), digest_size=8).digest()
    return np.random.SeedSequence([seed, int.from_bytes(digest, "little")])


class Occluder:
    """Draws one occluder, of a kind chosen uniformly among ``kinds``, on a face image."""

    def __init__(self, seed: int = 0, kinds: Sequence[str] = KINDS):
        unknown = set(kinds) - set(_DRAWERS)
        if not kinds or unknown:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}")
        self.seed = seed
        self.kinds = tuple(kinds)
        self._stream = np.random.default_rng(seed)

    def rng(self, key: str | int | None) -> np.random.Generator:
        """The generator for ``key``: its own when given, else the shared stream."""
        return self._stream if key is None else np.random.default_rng(stable_seed(self.seed, key))

    def __call__(
        self, img: np.ndarray, landmarks: np.ndarray | None = None, *, key: str | int | None = None
    ) -> Occlusion:
        """Occlude a copy of the BGR uint8 ``img`` at the face given by ``landmarks`` (image geometry
        when ``None``)."""
        rng = self.rng(key)
        if landmarks is None:
            landmarks = landmarks_from_geometry(img.shape)
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        colour, alpha = _DRAWERS[kind](img.shape[:2], FaceFrame.from_landmarks(landmarks), rng)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=1.0)[..., None]
        blended = img.astype(np.float32) * (1.0 - alpha) + colour * alpha
        return Occlusion(image=np.clip(blended + 0.5, 0, 255).astype(np.uint8), kind=kind)


# Each drawer returns a float32 colour layer (h, w, 3) and an alpha mask (h, w) in [0, 1].
_Drawer = Callable[[tuple[int, int], FaceFrame, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _canvas(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((*shape, 3), dtype=np.float32), np.zeros(shape, dtype=np.float32)


def _shaded(
    colour: Sequence[int], shape: tuple[int, int], rng: np.random.Generator, amount: float
) -> np.ndarray:
    """A flat colour with a little smooth noise, so that occluders are not perfectly uniform."""
    noise = cv2.resize(rng.normal(0.0, amount, (8, 8)).astype(np.float32), shape[::-1])
    return np.clip(np.asarray(colour, dtype=np.float32) + noise[..., None], 0, 255)


def _draw_mask(shape: tuple[int, int], frame: FaceFrame, rng: np.random.Generator):
    layer, alpha = _canvas(shape)
    top = rng.uniform(0.3, 0.5)
    half = rng.uniform(1.0, 1.2)
    chin = rng.uniform(1.75, 1.95)
    outline = [
        (-half, top + 0.1),
        (-0.4, top),
        (0.0, top - 0.08),
        (0.4, top),
        (half, top + 0.1),
        (half * 0.98, 1.2),
        (half * 0.75, chin - 0.2),
        (half * 0.35, chin - 0.03),
        (0.0, chin),
        (-half * 0.35, chin - 0.03),
        (-half * 0.75, chin - 0.2),
        (-half * 0.98, 1.2),
    ]
    cv2.fillPoly(alpha, [frame.to_image(np.array(outline))], 1.0)
    colour = _MASK_COLOURS[int(rng.integers(len(_MASK_COLOURS)))]
    layer[:] = _shaded(colour, shape, rng, 6.0)
    pleat = np.asarray(colour, dtype=np.float32) * 0.8
    thickness = max(1, round(frame.d / 30))
    for y in np.linspace(top + 0.35, chin - 0.45, 3):
        ends = frame.to_image(np.array([(-half * 0.85, y), (half * 0.85, y)]))
        cv2.line(layer, tuple(ends[0]), tuple(ends[1]), pleat.tolist(), thickness)
    for side in (-1, 1):
        strap = frame.to_image(np.array([(side * half, top + 0.15), (side * (half + 0.45), top - 0.1)]))
        cv2.line(alpha, tuple(strap[0]), tuple(strap[1]), 1.0, thickness + 1)
    return layer, alpha


def _draw_sunglasses(shape: tuple[int, int], frame: FaceFrame, rng: np.random.Generator):
    layer, alpha = _canvas(shape)
    axes = (round(frame.w * rng.uniform(0.42, 0.52)), round(frame.d * rng.uniform(0.26, 0.34)))
    for x in (-0.5, 0.5):
        (centre,) = frame.to_image(np.array([(x, 0.02)]))
        cv2.ellipse(alpha, tuple(centre), axes, frame.angle, 0, 360, 1.0, -1)
    thickness = max(2, round(frame.d * 0.08))
    bridge = frame.to_image(np.array([(-0.2, -0.05), (0.2, -0.05)]))
    cv2.line(alpha, tuple(bridge[0]), tuple(bridge[1]), 1.0, thickness)
    for side in (-1, 1):
        temple = frame.to_image(np.array([(side * 0.9, -0.05), (side * 1.35, -0.1)]))
        cv2.line(alpha, tuple(temple[0]), tuple(temple[1]), 1.0, thickness)
    layer[:] = _shaded(_LENS_COLOURS[int(rng.integers(len(_LENS_COLOURS)))], shape, rng, 8.0)
    return layer, alpha * rng.uniform(0.9, 1.0)


def _draw_patch(shape: tuple[int, int], frame: FaceFrame, rng: np.random.Generator):
    layer, alpha = _canvas(shape)
    (left, top), (right, bottom) = _FACE_BOX
    width, height = rng.uniform(0.3, 0.55, size=2) * (right - left, bottom - top)
    cx, cy = (
        rng.uniform(left + width / 2, right - width / 2),
        rng.uniform(top + height / 2, bottom - height / 2),
    )
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * (width / 2, height / 2) + (cx, cy)
    cv2.fillPoly(alpha, [frame.to_image(corners)], 1.0)
    if rng.random() < 0.5:
        layer[:] = rng.integers(0, 256, size=3).astype(np.float32)
    else:
        cells = (max(2, shape[0] // 8), max(2, shape[1] // 8), 3)
        noise = rng.integers(0, 256, size=cells).astype(np.float32)
        layer[:] = cv2.resize(noise, shape[::-1], interpolation=cv2.INTER_NEAREST)
    return layer, alpha


def _draw_hand(shape: tuple[int, int], frame: FaceFrame, rng: np.random.Generator):
    layer, alpha = _canvas(shape)
    anchors = ((0.0, 1.1), (-0.7, 0.8), (0.7, 0.8), (0.0, 1.5))  # mouth, left cheek, right cheek, chin
    ax, ay = anchors[int(rng.integers(len(anchors)))]
    spin = rng.uniform(-60, 60)
    (palm,) = frame.to_image(np.array([(ax, ay)]))
    palm_axes = (round(frame.w * rng.uniform(0.6, 0.8)), round(frame.d * rng.uniform(0.5, 0.65)))
    cv2.ellipse(alpha, tuple(palm), palm_axes, frame.angle + spin, 0, 360, 1.0, -1)
    theta = np.radians(frame.angle + spin)
    along = np.array([np.cos(theta), np.sin(theta)])  # across the palm
    up = np.array([np.sin(theta), -np.cos(theta)])  # from the palm to the fingertips
    finger_len = frame.d * rng.uniform(0.7, 0.95)
    finger_width = max(2, round(frame.w * rng.uniform(0.14, 0.2)))
    for offset in np.linspace(-0.6, 0.6, 4):
        base = palm + along * offset * palm_axes[0] + up * palm_axes[1] * 0.6
        tip = base + up * finger_len * (1.0 - 0.15 * abs(offset))
        cv2.line(
            alpha, tuple(np.round(base).astype(int)), tuple(np.round(tip).astype(int)), 1.0, finger_width * 2
        )
    layer[:] = _shaded(_SKIN_COLOURS[int(rng.integers(len(_SKIN_COLOURS)))], shape, rng, 10.0)
    return layer, alpha


_DRAWERS: dict[str, _Drawer] = {
    "mask": _draw_mask,
    "sunglasses": _draw_sunglasses,
    "patch": _draw_patch,
    "hand": _draw_hand,
}
