"""What both HTTP front ends read from a request: the app's gateway, names, values, uploads.

Every parser raises :class:`~veilface.errors.BadRequest` (or ``InvalidImage``) with a message
naming the parameter; the CompreFace API translates those into its own error bodies.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, request

from veilface import errors

if TYPE_CHECKING:
    from veilface.api.gateway import Gateway

#: The key of the app's :class:`~veilface.api.gateway.Gateway` in ``app.extensions``.
EXTENSION = "veilface"
#: The most candidates a search may ask for.
MAX_TOP_K = 100

_GALLERY_NAME = re.compile(r"^[^\x00-\x1f\x7f/]+$")
_SUBJECT_NAME = re.compile(r"^[^\x00-\x1f\x7f]+$")
_TRUE, _FALSE = ("true", "1", "yes"), ("", "false", "0", "no")


def install_gateway(app: Flask, gateway: Gateway) -> None:
    """Make ``gateway`` the one :func:`current_gateway` returns in ``app``."""
    app.extensions[EXTENSION] = gateway


def current_gateway() -> Gateway:
    """The gateway of the app handling the current request."""
    return current_app.extensions[EXTENSION]


def checked_gallery(value: str) -> str:
    """Gallery names are 1-128 printable characters without '/'; anything else is a 400."""
    if len(value) > 128 or not value.strip() or not _GALLERY_NAME.match(value):
        raise errors.BadRequest("gallery must be 1-128 printable characters without '/'")
    return value


def checked_subject(value: str) -> str:
    """Subject names are 1-255 printable characters (any, '/' and markup included)."""
    if len(value) > 255 or not value.strip() or not _SUBJECT_NAME.match(value):
        raise errors.BadRequest("subject must be 1-255 printable characters")
    return value


def int_arg(name: str, default: int, low: int, high: int | None = None) -> int:
    """Integer parameter ``name`` (query or form) in ``[low, high]``; ``default`` when absent."""
    raw = request.values.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise errors.BadRequest(f"{name} must be an integer") from exc
    if high is None and value < low:
        raise errors.BadRequest(f"{name} must be greater than or equal to {low}")
    if high is not None and not low <= value <= high:
        raise errors.BadRequest(f"{name} must be between {low} and {high}")
    return value


def float_arg(name: str, low: float, high: float, meaning: str | None = None) -> float | None:
    """Number parameter ``name`` in ``[low, high]``; ``None`` when absent or empty.

    ``meaning`` names what the number is in the message of an out-of-range value.
    """
    raw = request.values.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise errors.BadRequest(f"{name} must be a number") from exc
    if not low <= value <= high:  # NaN too
        raise errors.BadRequest(f"{name} must be {meaning or 'a number'} in [{low:g}, {high:g}]")
    return value


def bool_arg(name: str) -> bool:
    """Boolean parameter ``name``: true/1/yes or false/0/no (any case); absent is false."""
    raw = request.values.get(name, "").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise errors.BadRequest(f"{name} must be true or false")
    return raw in _TRUE


def json_object() -> dict[str, Any] | None:
    """The request's JSON body if it is an object; ``None`` for any other body or none."""
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else None


def uploaded_images(field: str, *, required: bool = True) -> list[bytes]:
    """The bytes of every file in multipart field ``field``; empty files are invalid images."""
    files = request.files.getlist(field)
    if not files:
        if required:
            raise errors.BadRequest(f"send the image as multipart field {field!r}")
        return []
    images = [f.read() for f in files]
    if any(len(img) == 0 for img in images):
        raise errors.InvalidImage("an uploaded file is empty")
    return images


def one_image(field: str) -> bytes:
    """The one file of multipart field ``field``; none or several is a 400."""
    images = uploaded_images(field)
    if len(images) != 1:
        raise errors.BadRequest(f"send exactly one file in field {field!r}")
    return images[0]
