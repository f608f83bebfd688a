"""The exceptions Veilface raises on purpose, each with a stable code and HTTP status.

The gateway turns every :class:`VeilfaceError` into ``{"error": {"code", "message"}}``;
workers raise them too, and they travel back over Celery by code.
"""

from __future__ import annotations


class VeilfaceError(Exception):
    """Base class: ``code`` is stable and documented, ``status`` is the HTTP status."""

    code = "internal"
    status = 500

    def __init__(self, message: str | None = None):
        super().__init__(message or self.__doc__.strip().splitlines()[0])

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadRequest(VeilfaceError):
    """The request is malformed."""

    code, status = "bad_request", 400


class InvalidImage(VeilfaceError):
    """The upload is not a decodable image."""

    code, status = "invalid_image", 415


class ImageTooLarge(VeilfaceError):
    """The image or upload exceeds the configured size limit."""

    code, status = "image_too_large", 413


class NoFace(VeilfaceError):
    """No face was found in the image."""

    code, status = "no_face", 422


class MultipleFaces(VeilfaceError):
    """The image holds several faces; pass ?face=main to enroll the main one."""

    code, status = "multiple_faces", 422


class PoorQuality(VeilfaceError):
    """The face is too small or too blurred to be matched."""

    code, status = "poor_quality", 422


class Unauthorized(VeilfaceError):
    """A valid API key is required."""

    code, status = "unauthorized", 401


class Forbidden(VeilfaceError):
    """This API key may not do that."""

    code, status = "forbidden", 403


class NotFound(VeilfaceError):
    """No such resource."""

    code, status = "not_found", 404


class MethodNotAllowed(VeilfaceError):
    """The resource does not answer this HTTP method."""

    code, status = "method_not_allowed", 405


class UnknownSubject(NotFound):
    """No such subject in this gallery."""

    code = "unknown_subject"


class UnknownGallery(NotFound):
    """No such gallery."""

    code = "unknown_gallery"


class Conflict(VeilfaceError):
    """The resource already exists."""

    code, status = "conflict", 409


class KeyModeConflict(Conflict):
    """The gallery exists with other keys than asked for; its key mode never changes."""

    code = "key_mode_conflict"


class ClientKeyGallery(Conflict):
    """The gallery's key is held by its client: the server cannot read its scores or decide a match."""

    code = "client_key_gallery"


class RateLimited(VeilfaceError):
    """Too many requests for this API key."""

    code, status = "rate_limited", 429


class Unavailable(VeilfaceError):
    """A backend (database, broker or workers) is unavailable; retry later."""

    code, status = "unavailable", 503


class KeyMismatch(VeilfaceError):
    """The CKKS context does not belong to this deployment's key set."""

    code, status = "key_mismatch", 503


class SchemaMissing(VeilfaceError):
    """The database lacks the Veilface schema; run `veilface db migrate`."""

    code, status = "schema_missing", 503


class SecretKeyInPublicContext(VeilfaceError):
    """A worker was handed a context that holds the secret key; it refuses to start."""

    code, status = "secret_key_present", 500


class MissingDriver(VeilfaceError):
    """The database URL names a driver that is not installed."""

    code, status = "missing_driver", 500


class InvalidCiphertext(VeilfaceError):
    """A ciphertext could not be parsed against the deployment's context."""

    code, status = "invalid_ciphertext", 400


class InvalidKeySet(BadRequest):
    """An uploaded public key set was refused: unreadable, holding a secret key, or not usable here."""

    code = "invalid_key_set"


class MessageRefused(VeilfaceError):
    """A worker refused a queue message it could not authenticate (forged, altered or expired)."""

    code, status = "message_refused", 503


_BY_CODE = {
    cls.code: cls
    for cls in (
        BadRequest,
        InvalidImage,
        ImageTooLarge,
        NoFace,
        MultipleFaces,
        PoorQuality,
        Unauthorized,
        Forbidden,
        NotFound,
        UnknownSubject,
        UnknownGallery,
        Conflict,
        KeyModeConflict,
        ClientKeyGallery,
        RateLimited,
        Unavailable,
        KeyMismatch,
        InvalidCiphertext,
        InvalidKeySet,
        MessageRefused,
    )
}


def codes() -> list[str]:
    """Every code declared in this module, in the order declared: the codes an API error may carry."""
    declared = [v for v in globals().values() if isinstance(v, type) and issubclass(v, VeilfaceError)]
    return list(dict.fromkeys(cls.code for cls in declared))


def from_code(code: str, message: str) -> VeilfaceError:
    """Rebuild an error that crossed a process boundary as ``(code, message)``."""
    return _BY_CODE.get(code, VeilfaceError)(message)
