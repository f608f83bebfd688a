"""CompreFace's error bodies ``{"message", "code"}``: its codes and the form of every Veilface error."""

from __future__ import annotations

import logging
from enum import IntEnum

from flask import Blueprint, Response
from werkzeug.exceptions import HTTPException

from veilface import errors
from veilface.api.errors import BACKEND_DOWN, RETRY_AFTER_S, backend_down, json_error, retry_after

log = logging.getLogger(__name__)

NO_FACE_MESSAGE = "No face is found in the given image"
TOO_MANY_FACES_MESSAGE = "More than one face in the source image"


class Code(IntEnum):
    """CompreFace's numeric error codes (the ``code`` of its error bodies)."""

    UNDEFINED = 0
    MODEL_NOT_FOUND = 10
    INCORRECT_PREDICTION_COUNT = 12
    MISSING_REQUEST_HEADER = 20
    UNAVAILABLE_FILE_EXTENSION = 21
    VALIDATION_CONSTRAINT_VIOLATION = 26
    NO_FACES_FOUND = 28
    TOO_MANY_FACES = 31
    WRITING_NOT_ALLOWED = 32
    MISSING_REQUEST_PART = 34
    INCORRECT_ARGUMENT = 36
    FACES_SERVICE_EXCEPTION = 41
    SUBJECT_NOT_FOUND = 42
    SUBJECT_ALREADY_EXISTS = 43
    EMBEDDING_NOT_FOUND = 44


class CompreFaceError(Exception):
    """An error as CompreFace reports it: HTTP ``status`` and body ``{"message", "code"}``.

    ``retry_after``: the seconds a 429 or 503 asks the client to wait.
    """

    def __init__(self, status: int, code: Code, message: str, retry_after: int = RETRY_AFTER_S):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after

    @property
    def outcome(self) -> str:
        """How the audit log records this error, e.g. ``too_many_faces``."""
        return self.code.name.lower()


#: Veilface error code -> (HTTP status, CompreFace code, message or None to keep Veilface's).
_TRANSLATIONS: dict[str, tuple[int, Code, str | None]] = {
    "bad_request": (400, Code.VALIDATION_CONSTRAINT_VIOLATION, None),
    "invalid_image": (400, Code.UNAVAILABLE_FILE_EXTENSION, None),
    "image_too_large": (413, Code.UNDEFINED, None),
    "no_face": (400, Code.NO_FACES_FOUND, NO_FACE_MESSAGE),
    "multiple_faces": (400, Code.TOO_MANY_FACES, TOO_MANY_FACES_MESSAGE),
    "poor_quality": (400, Code.NO_FACES_FOUND, None),
    "unauthorized": (404, Code.MODEL_NOT_FOUND, "Face service with this API key not found"),
    "forbidden": (405, Code.WRITING_NOT_ALLOWED, "Writing is not allowed: this API key is read-only"),
    "not_found": (404, Code.UNDEFINED, None),
    "unknown_subject": (404, Code.SUBJECT_NOT_FOUND, None),
    "unknown_gallery": (404, Code.MODEL_NOT_FOUND, None),
    # and its refinements: client_key_gallery (the server cannot decide a match), key_mode_conflict
    "conflict": (400, Code.INCORRECT_ARGUMENT, None),
    "rate_limited": (429, Code.UNDEFINED, None),
    "unavailable": (503, Code.FACES_SERVICE_EXCEPTION, None),
    "key_mismatch": (503, Code.FACES_SERVICE_EXCEPTION, None),
    "invalid_ciphertext": (500, Code.FACES_SERVICE_EXCEPTION, None),
}
_INTERNAL = CompreFaceError(500, Code.UNDEFINED, "Something went wrong, please try again")


def translate(exc: errors.VeilfaceError) -> CompreFaceError:
    """The CompreFace form of a Veilface error: that of its code, or else of the nearest class it
    refines (``key_mode_conflict`` is a ``conflict``); an error of no known kind is CompreFace's 500."""
    translation = next(
        (
            _TRANSLATIONS[cls.code]
            for cls in type(exc).__mro__
            if issubclass(cls, errors.VeilfaceError) and cls.code in _TRANSLATIONS
        ),
        None,
    )
    if translation is None:
        return _INTERNAL
    status, code, message = translation
    if exc.code == "poor_quality":
        message = f"No usable face is found in the given image: {exc.message}"
    return CompreFaceError(status, code, message or exc.message, retry_after(exc))


def error_response(exc: CompreFaceError) -> Response:
    """The ``{"message", "code"}`` response of a CompreFace error."""
    return json_error({"message": exc.message, "code": int(exc.code)}, exc.status, exc.retry_after)


def register(blueprint: Blueprint) -> None:
    """Make every failure in ``blueprint`` a CompreFace error body, never Veilface's nor a trace."""
    blueprint.register_error_handler(CompreFaceError, error_response)
    blueprint.register_error_handler(errors.VeilfaceError, lambda exc: error_response(translate(exc)))
    for backend_error in BACKEND_DOWN:
        blueprint.register_error_handler(
            backend_error, lambda exc: error_response(translate(backend_down(exc)))
        )

    @blueprint.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 400
        code = Code.VALIDATION_CONSTRAINT_VIOLATION if status == 400 else Code.UNDEFINED
        return error_response(CompreFaceError(status, code, exc.description or exc.name))

    @blueprint.errorhandler(Exception)
    def _unexpected(_exc: Exception) -> Response:
        log.exception("unexpected error in the CompreFace API")
        return error_response(_INTERNAL)
