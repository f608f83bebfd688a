"""SCRFD face detection (boxes plus five landmarks) on ONNX Runtime, with its own decoding and NMS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from veilface.face.runtime import create_session

_STRIDES = (8, 16, 32)
_ANCHORS_PER_CELL = 2
#: Passes over the image, tried in turn: (padding added on every side, as a fraction of the image's
#: longer side; network input size, as a fraction of the configured one). SCRFD misses faces that
#: fill its input, as in tight crops (CFP, passport photos): the half-size pass shrinks them, and the
#: padded one also gives back the outline around the face.
_PASSES = ((0.0, 1.0), (0.0, 0.5), (0.3, 0.5))
#: A face whose box (clipped to the image) has a shorter side of at least this fraction of the
#: image's shorter side ends the search. A pass that only finds smaller faces, often a false detection
#: inside a face too large for it, lets the next pass try.
_SUBJECT_FRACTION = 0.3


@dataclass(frozen=True, eq=False)
class Detection:
    """One face: ``box`` is ``(x, y, w, h)`` in pixels of the original image, clipped to it.

    ``landmarks`` is a float32 ``(5, 2)`` array of (x, y) points: left eye, right eye, nose, left and
    right mouth corners (as seen in the image). They are not clipped: on tight crops a point may lie
    just outside the image.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        """Area of the box in pixels."""
        return self.box[2] * self.box[3]


class FaceDetector:
    """SCRFD detector (``scrfd_2.5g_bnkps.onnx``); the session is created once and is thread-safe.

    ``provider`` is the ONNX Runtime execution provider actually in use.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int = 1,
        providers: Sequence[str] | None = None,
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
    ):
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        self._session = create_session(model_path, threads=threads, providers=providers)
        self._input_name = self._session.get_inputs()[0].name
        self._input_size = input_size
        self._score_threshold = score_threshold
        self._nms_threshold = nms_threshold
        self.provider: str = self._session.get_providers()[0]

    def detect(self, img: np.ndarray) -> list[Detection]:
        """Find the faces in a BGR uint8 image, the main face first (see :func:`by_prominence`);
        coordinates refer to ``img``.

        Passes run until one finds a face whose shorter side is at least 30% of the image's: the image
        as is, then at half the input size, then padded by 30% on every side at half the input size.
        The result is that pass's faces or, when no pass finds such a face, those of the first pass
        that found any. Ordinary photos take one pass; only tight crops and photos of small faces pay
        for the cheap half-size passes.
        """
        height, width = img.shape[:2]
        subject_side = _SUBJECT_FRACTION * min(height, width)
        first_found: list[Detection] = []
        for padding, relative_size in _PASSES:
            pad = round(padding * max(height, width))
            padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            size = max(32, round(self._input_size * relative_size / 32) * 32)
            boxes, scores, landmarks = self._detect_once(padded, size)
            found = _detections(boxes - pad, scores, landmarks - pad, width=width, height=height)
            if any(min(d.box[2], d.box[3]) >= subject_side for d in found):
                return by_prominence(found, width=width, height=height)
            first_found = first_found or found
        return by_prominence(first_found, width=width, height=height)

    def _detect_once(self, img: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pass: ``(boxes[n, 4] as x1 y1 x2 y2, scores[n], landmarks[n, 5, 2])`` after NMS."""
        blob, scale = _letterbox(img, size)
        boxes, scores, landmarks = _decode(self._session.run(None, {self._input_name: blob}), size)
        keep = _nms(boxes, scores, self._score_threshold, self._nms_threshold)
        return boxes[keep] / scale, scores[keep], landmarks[keep] / scale


def by_prominence(detections: list[Detection], *, width: int, height: int) -> list[Detection]:
    """``detections`` ordered by prominence, the main face (the subject of the photo) first.

    Prominence is insightface's rule for picking the face of a photo: the box's area minus twice the
    squared distance of its centre to the image's centre. A bystander nearer the camera may have a
    larger box than the person photographed, but seldom at the centre (``docs/face-pipeline.md``).
    """

    def prominence(detection: Detection) -> float:
        x, y, w, h = detection.box
        return detection.area - 2.0 * ((x + w / 2 - width / 2) ** 2 + (y + h / 2 - height / 2) ** 2)

    return sorted(detections, key=prominence, reverse=True)


def _detections(
    boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, *, width: int, height: int
) -> list[Detection]:
    """Package raw results as :class:`Detection` objects with boxes clipped to the image."""
    detections = []
    for (x1, y1, x2, y2), score, points in zip(boxes, scores, landmarks, strict=True):
        x1, x2 = np.clip((x1, x2), 0, width)
        y1, y2 = np.clip((y1, y2), 0, height)
        box = (float(x1), float(y1), float(x2 - x1), float(y2 - y1))
        detections.append(Detection(box=box, score=float(score), landmarks=points))
    return detections


def _letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize into the top-left of a ``size`` square canvas; return the NCHW float blob and the scale."""
    height, width = img.shape[:2]
    scale = min(size / height, size / width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    blob = (canvas[:, :, ::-1].astype(np.float32) - 127.5) / 128.0
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), scale


def _decode(outputs: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the nine raw outputs into candidate boxes, scores and landmarks in canvas pixels.

    Outputs are told apart by width (1: score, 4: box distances, 10: landmark offsets) and, within a
    kind, by length: the finest stride has the most anchors.
    """
    by_width: dict[int, list[np.ndarray]] = {1: [], 4: [], 10: []}
    for out in sorted(outputs, key=len, reverse=True):
        by_width[out.shape[-1]].append(out)
    all_boxes, all_scores, all_points = [], [], []
    for stride, scores, dists, offsets in zip(_STRIDES, *by_width.values(), strict=True):
        centers = _anchor_centers(size // stride, stride)
        dists = dists * stride
        all_boxes.append(np.hstack([centers - dists[:, :2], centers + dists[:, 2:]]))
        all_scores.append(scores[:, 0])
        all_points.append(centers[:, None, :] + offsets.reshape(-1, 5, 2) * stride)
    return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_points)


@cache
def _anchor_centers(cells: int, stride: int) -> np.ndarray:
    """(x, y) centres of a ``cells`` x ``cells`` grid, each repeated once per anchor, row-major."""
    ys, xs = np.mgrid[:cells, :cells]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    centers = np.repeat(centers, _ANCHORS_PER_CELL, axis=0)
    centers.flags.writeable = False
    return centers


def _nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by non-maximum suppression, best score first."""
    candidates = np.flatnonzero(scores >= score_threshold)
    if not len(candidates):
        return candidates
    xywh = boxes[candidates].copy()
    xywh[:, 2:] -= xywh[:, :2]
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores[candidates].tolist(), score_threshold, iou_threshold)
    kept = candidates[np.asarray(kept, dtype=np.int64).reshape(-1)]
    return kept[np.argsort(-scores[kept], kind="stable")]
