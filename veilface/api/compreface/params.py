"""What CompreFace's endpoints read from a request: face options, images, subject names, paging.

Values are parsed by :mod:`veilface.api.params`, as for ``/v1``; a ``BadRequest`` from there
becomes CompreFace's code 26 through :func:`~veilface.api.compreface.errors.translate`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from flask import request

from veilface import errors
from veilface.api.compreface.errors import NO_FACE_MESSAGE, Code, CompreFaceError
from veilface.api.params import bool_arg, checked_subject, float_arg, int_arg, json_object, uploaded_images

T = TypeVar("T")


def det_prob_threshold() -> float | None:
    """``det_prob_threshold``: the lowest detector probability of a face kept, in [0, 1]."""
    return float_arg("det_prob_threshold", 0.0, 1.0, "a probability")


def prediction_count() -> int:
    """``prediction_count``: candidates per face, at least 1 (default 1); a bad one is code 12."""
    try:
        return int_arg("prediction_count", 1, 1)
    except errors.BadRequest as exc:
        raise CompreFaceError(400, Code.INCORRECT_PREDICTION_COUNT, exc.message) from exc


@dataclass(frozen=True)
class FaceOptions:
    """The options CompreFace's face endpoints share."""

    limit: int = 0
    det_prob_threshold: float | None = None
    status: bool = False
    plugins: tuple[str, ...] = ()

    @classmethod
    def from_request(cls) -> FaceOptions:
        plugins = request.values.get("face_plugins", "")
        return cls(
            limit=int_arg("limit", 0, 0),
            det_prob_threshold=det_prob_threshold(),
            status=bool_arg("status"),
            plugins=tuple(p.strip() for p in plugins.split(",") if p.strip()),
        )

    def pick(self, faces: list[T], box_of: Callable[[T], tuple[Sequence[float], float]]) -> list[T]:
        """Faces at or above the detection threshold, largest first, at most ``limit`` (0: all).

        No face left is CompreFace's "no face found" error.
        """
        kept = [
            f for f in faces if self.det_prob_threshold is None or box_of(f)[1] >= self.det_prob_threshold
        ]
        kept.sort(key=lambda f: box_of(f)[0][2] * box_of(f)[0][3], reverse=True)
        if not kept:
            raise CompreFaceError(400, Code.NO_FACES_FOUND, NO_FACE_MESSAGE)
        return kept[: self.limit] if self.limit else kept


def uploaded_image(field: str = "file") -> bytes:
    """The image in multipart field ``field``, or base64 under key ``field`` of a JSON body."""
    if request.is_json:
        return _base64_image(field)
    images = uploaded_images(field, required=False)
    if not images:
        raise CompreFaceError(
            400, Code.MISSING_REQUEST_PART, f"Required request part '{field}' is not present"
        )
    return images[0]


def _base64_image(field: str) -> bytes:
    body = json_object()
    value = body.get(field) if body is not None else None
    if not isinstance(value, str) or not value.strip():
        raise CompreFaceError(400, Code.MISSING_REQUEST_PART, f"Required field '{field}' is not present")
    _, _, data = value.strip().rpartition(",")  # tolerate a data: URL prefix
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CompreFaceError(
            400, Code.VALIDATION_CONSTRAINT_VIOLATION, f"'{field}' is not valid base64"
        ) from exc
    if not decoded:
        raise errors.InvalidImage("the uploaded image is empty")
    return decoded


def json_subject() -> str | None:
    """``subject`` of a JSON body ``{"subject": NAME}`` as sent; ``None`` if it is no name at all."""
    body = json_object()
    value = body.get("subject") if body is not None else None
    return value if isinstance(value, str) and value.strip() else None


def required_json_subject() -> str:
    """``subject`` of a JSON body ``{"subject": NAME}``, checked like every Veilface name."""
    value = json_subject()
    if value is None:
        raise CompreFaceError(400, Code.VALIDATION_CONSTRAINT_VIOLATION, "Subject name is empty")
    return checked_subject(value)


def query_subject(*, required: bool) -> str | None:
    """Parameter ``subject`` checked like every Veilface name; ``None`` when absent and optional."""
    value = request.values.get("subject")
    if value is None or not value.strip():
        if required:
            raise CompreFaceError(400, Code.VALIDATION_CONSTRAINT_VIOLATION, "Subject name is empty")
        return None
    return checked_subject(value)


def paging_int(name: str, default: int) -> int:
    """Paging values as Spring reads them: anything unreadable is the default."""
    try:
        return int(request.values.get(name, default))
    except ValueError:
        return default
