"""CompreFace-compatible REST API under ``/api/v1``: existing clients, encrypted templates.

A Veilface API key bound to a gallery (``veilface keys create-api-key --gallery NAME
--compreface``) plays the part of a CompreFace face service: every call made with it acts
on that gallery. Enrollment, identification and verification go through
:class:`~veilface.api.gateway.Gateway`, so templates are made, stored and matched exactly
as through ``/v1``: only as CKKS ciphertexts. Answers and errors keep CompreFace's field
names, status codes and ``{"message", "code"}`` error bodies; docs/compreface.md lists
what is supported and what differs.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

from flask import Blueprint, Response, g, jsonify, request
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from veilface import errors
from veilface.api.auth import audit, limit_subject_verification, presented_key, require_key
from veilface.api.disclosure import Disclosure
from veilface.api.errors import RETRY_AFTER_S
from veilface.api.gateway import FaceScore, IdentifiedFace
from veilface.api.v1 import MAX_TOP_K, checked_subject, gateway, uploaded_images
from veilface.store import galleries as store
from veilface.store.models import Gallery, Template

log = logging.getLogger(__name__)

blueprint = Blueprint("compreface", __name__, url_prefix="/api/v1")

T = TypeVar("T")

#: Page size of ``GET /recognition/faces`` when none is asked for, and the largest served.
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 2000

#: What an answer says when its request asked for face plugins (Veilface computes none).
PLUGINS_NOTE = (
    "Veilface offers no face plugins: the requested ones are ignored. Templates exist only "
    "encrypted, so 'calculator' (the embedding) is never returned."
)
NO_FACE_MESSAGE = "No face is found in the given image"
TOO_MANY_FACES_MESSAGE = "More than one face in the source image"
NO_SERVICE_YET_MESSAGE = (
    "Writing is not allowed: gallery {gallery!r} does not exist yet and this read-only key may not "
    "create it; an admin-scope key bound to it creates it on first use"
)
UNBOUND_KEY_MESSAGE = (
    "Face service with this API key not found: the key is not bound to a gallery "
    "(create one with `veilface keys create-api-key --gallery NAME --compreface`)"
)


# -- errors -------------------------------------------------------------------------------


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
    "conflict": (400, Code.INCORRECT_ARGUMENT, None),
    "rate_limited": (429, Code.UNDEFINED, None),
    "unavailable": (503, Code.FACES_SERVICE_EXCEPTION, None),
    "key_mismatch": (503, Code.FACES_SERVICE_EXCEPTION, None),
    "invalid_ciphertext": (500, Code.FACES_SERVICE_EXCEPTION, None),
}
_INTERNAL = CompreFaceError(500, Code.UNDEFINED, "Something went wrong, please try again")


def translate(exc: errors.VeilfaceError) -> CompreFaceError:
    """The CompreFace form of a Veilface error."""
    if exc.code not in _TRANSLATIONS:
        return _INTERNAL
    status, code, message = _TRANSLATIONS[exc.code]
    if exc.code == "poor_quality":
        message = f"No usable face is found in the given image: {exc.message}"
    return CompreFaceError(status, code, message or exc.message, getattr(exc, "retry_after", RETRY_AFTER_S))


@blueprint.errorhandler(CompreFaceError)
def _compreface_error(exc: CompreFaceError) -> Response:
    response = jsonify({"message": exc.message, "code": int(exc.code)})
    response.status_code = exc.status
    if exc.status in (429, 503):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


@blueprint.errorhandler(errors.VeilfaceError)
def _veilface_error(exc: errors.VeilfaceError) -> Response:
    return _compreface_error(translate(exc))


@blueprint.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 400
    code = Code.VALIDATION_CONSTRAINT_VIOLATION if status == 400 else Code.UNDEFINED
    return _compreface_error(CompreFaceError(status, code, exc.description or exc.name))


@blueprint.errorhandler(DBAPIError)
@blueprint.errorhandler(BrokerError)
@blueprint.errorhandler(RedisConnectionError)
def _backend_down(exc: Exception) -> Response:
    log.warning("backend unavailable: %s", type(exc).__name__)
    return _veilface_error(errors.Unavailable("a backend is unavailable; retry later"))


@blueprint.errorhandler(Exception)
def _unexpected(_exc: Exception) -> Response:
    log.exception("unexpected error in the CompreFace API")
    return _compreface_error(_INTERNAL)


# -- authentication -----------------------------------------------------------------------


def service_key(*, write: bool = False) -> Callable:
    """Decorator: a live key bound to a gallery; the view gets the gallery name first.

    ``write`` views need an admin-scope key. An admin key's gallery is created on first use,
    as a CompreFace service exists, empty, as soon as its key does; a read or eval key may not
    create it (403, nothing stored).
    """

    def decorator(view: Callable) -> Callable:
        @require_key("admin" if write else "read")
        def authorised(*args, **kwargs):
            gallery = g.api_key_gallery
            if not gallery:
                raise CompreFaceError(404, Code.MODEL_NOT_FOUND, UNBOUND_KEY_MESSAGE)
            with gateway().session() as session:
                if g.api_key_scope == "admin":
                    store.get_or_create_gallery(session, gallery)
                else:
                    _existing_gallery(session, gallery)
            return view(gallery, *args, **kwargs)

        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if not presented_key():
                raise CompreFaceError(400, Code.MISSING_REQUEST_HEADER, "Missing header: x-api-key")
            return authorised(*args, **kwargs)

        return wrapped

    return decorator


def _existing_gallery(session: Session, gallery: str) -> None:
    """A read or eval key's gallery must exist already: such a key creates nothing (403)."""
    try:
        store.get_gallery(session, gallery)
    except errors.UnknownGallery as exc:
        raise CompreFaceError(
            403, Code.WRITING_NOT_ALLOWED, NO_SERVICE_YET_MESSAGE.format(gallery=gallery)
        ) from exc


# -- identifiers and values -----------------------------------------------------------------

#: High 64 bits of every image id: "veil" "fa", then UUID version 8 (custom layout, RFC 9562).
_IMAGE_ID_PREFIX = 0x7665696C_6661_8000
_IMAGE_ID_VARIANT = 0b10 << 62
_TEMPLATE_ID_MASK = (1 << 62) - 1


def image_id_for(template_id: int) -> str:
    """The CompreFace ``image_id`` (a UUID) of a Veilface template id; reversible, not secret."""
    return str(uuid.UUID(int=(_IMAGE_ID_PREFIX << 64) | _IMAGE_ID_VARIANT | template_id))


def template_id_of(image_id: str) -> int | None:
    """The template id carried by ``image_id``; ``None`` if it is no Veilface image id."""
    try:
        value = uuid.UUID(image_id).int
    except ValueError:
        return None
    if value >> 64 != _IMAGE_ID_PREFIX or (value >> 62) & 0b11 != _IMAGE_ID_VARIANT >> 62:
        return None
    return value & _TEMPLATE_ID_MASK


def compreface_similarity(cosine: float) -> float:
    """CompreFace's similarity in [0, 1] from Veilface's cosine c in [-1, 1]: (1 + c) / 2."""
    return round(min(1.0, max(0.0, (1.0 + cosine) / 2.0)), 5)


def box_json(box: Sequence[float], score: float) -> dict[str, Any]:
    """CompreFace's box from Veilface's (x, y, width, height) in pixels and detector score."""
    x, y, width, height = box
    return {
        "probability": round(score, 5),
        "x_max": round(x + width),
        "y_max": round(y + height),
        "x_min": max(0, round(x)),
        "y_min": max(0, round(y)),
    }


# -- request parsing ----------------------------------------------------------------------


def _int_param(name: str, default: int, minimum: int, code: Code) -> int:
    raw = request.values.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise CompreFaceError(400, code, f"{name} must be an integer") from exc
    if value < minimum:
        raise CompreFaceError(400, code, f"{name} must be greater than or equal to {minimum}")
    return value


def _bool_param(name: str) -> bool:
    raw = request.values.get(name, "").strip().lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise CompreFaceError(400, Code.VALIDATION_CONSTRAINT_VIOLATION, f"{name} must be true or false")


def _det_prob_threshold() -> float | None:
    raw = request.values.get("det_prob_threshold", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise CompreFaceError(
            400, Code.VALIDATION_CONSTRAINT_VIOLATION, "det_prob_threshold must be between 0.0 and 1.0"
        )
    return value


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
            limit=_int_param("limit", 0, 0, Code.VALIDATION_CONSTRAINT_VIOLATION),
            det_prob_threshold=_det_prob_threshold(),
            status=_bool_param("status"),
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


def _image(field: str = "file") -> bytes:
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
    body = request.get_json(silent=True)
    value = body.get(field) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise CompreFaceError(400, Code.MISSING_REQUEST_PART, f"Required field '{field}' is not present")
    _, _, data = value.strip().rpartition(",")  # tolerate a data: URL prefix
    try:
        image = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CompreFaceError(
            400, Code.VALIDATION_CONSTRAINT_VIOLATION, f"'{field}' is not valid base64"
        ) from exc
    if not image:
        raise errors.InvalidImage("the uploaded image is empty")
    return image


def _json_subject() -> str:
    """``subject`` of a JSON body ``{"subject": NAME}``, checked like every Veilface name."""
    body = request.get_json(silent=True, force=True)
    value = body.get("subject") if isinstance(body, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise CompreFaceError(400, Code.VALIDATION_CONSTRAINT_VIOLATION, "Subject name is empty")
    return checked_subject(value)


def _query_subject(*, required: bool) -> str | None:
    value = request.values.get("subject")
    if value is None or not value.strip():
        if required:
            raise CompreFaceError(400, Code.VALIDATION_CONSTRAINT_VIOLATION, "Subject name is empty")
        return None
    return checked_subject(value)


def _live_example(session: Session, gallery: str, image_id: str) -> tuple[Template, str]:
    """The live template behind ``image_id`` in ``gallery`` and its subject; a 404 otherwise."""
    template_id = template_id_of(image_id)
    if template_id is None:
        raise CompreFaceError(404, Code.EMBEDDING_NOT_FOUND, "Image Id is not valid")
    try:
        return store.get_live_template(session, store.get_gallery(session, gallery), template_id)
    except errors.NotFound as exc:
        raise _image_missing(image_id) from exc


def _subject_missing(name: str) -> CompreFaceError:
    return CompreFaceError(404, Code.SUBJECT_NOT_FOUND, f"Subject {name} not found")


def _image_missing(image_id: str) -> CompreFaceError:
    return CompreFaceError(404, Code.EMBEDDING_NOT_FOUND, f"Image {image_id} not found")


# -- responses ----------------------------------------------------------------------------


def _plugins_versions() -> dict[str, str]:
    gw = gateway()
    return {
        "detector": f"veilface.{gw.settings.detector}",
        "calculator": f"veilface.{gw.registry.active().version}",
    }


def _execution_time(started: float) -> dict[str, float]:
    """Veilface times the whole request (detection, encryption and encrypted matching)."""
    return {"total": round((time.perf_counter() - started) * 1000.0, 1)}


def _face_reply(faces: list[dict], options: FaceOptions, started: float) -> Response:
    """``{"result": faces}`` plus the status fields and the plugin note when asked for."""
    body: dict[str, Any] = {"result": faces}
    if options.status:
        for face in faces:
            face["execution_time"] = _execution_time(started)
        body["plugins_versions"] = _plugins_versions()
    return jsonify(_with_plugin_note(body, options))


def _with_plugin_note(body: dict[str, Any], options: FaceOptions) -> dict[str, Any]:
    if options.plugins:
        body["ignored_face_plugins"] = list(options.plugins)
        body["note"] = PLUGINS_NOTE
    return body


# -- face collection: examples of subjects --------------------------------------------------


@blueprint.post("/recognition/faces", strict_slashes=False)
@service_key(write=True)
def add_example(gallery: str):
    """Enroll one image (one face) for a subject, created on first use."""
    subject = _query_subject(required=True)
    threshold = _det_prob_threshold()
    image = _image()
    try:
        template_id = _enroll(gallery, subject, image, main_face=_enrollment_face(image, threshold))
    except errors.VeilfaceError as exc:
        audit("enroll", gallery, subject, exc.code)
        raise
    except CompreFaceError as exc:
        audit("enroll", gallery, subject, exc.outcome)
        raise
    audit("enroll", gallery, subject)
    return jsonify({"image_id": image_id_for(template_id), "subject": subject}), 201


def _enrollment_face(image: bytes, threshold: float | None) -> bool:
    """Whether enrollment must pick the main face (``det_prob_threshold`` ruled the others out).

    Without a threshold the embedder itself refuses an image with several faces.
    """
    if threshold is None:
        return False
    faces = gateway().detect(image)
    kept = [f for f in faces if f.score >= threshold]
    if not kept:
        raise CompreFaceError(400, Code.NO_FACES_FOUND, NO_FACE_MESSAGE)
    if len(kept) > 1 or kept[0] is not faces[0]:  # the embedder lists the main face first
        raise CompreFaceError(400, Code.TOO_MANY_FACES, TOO_MANY_FACES_MESSAGE)
    return len(faces) > 1


def _enroll(gallery: str, subject: str, image: bytes, *, main_face: bool) -> int:
    """Enroll ``image`` for ``subject``; returns the template id.

    The embedder creates a new subject together with its first template, so a refused photo
    leaves no empty subject behind, as in CompreFace.
    """
    return gateway().enroll(gallery, subject, [image], main_face=main_face)["template_ids"][0]


@blueprint.get("/recognition/faces", strict_slashes=False)
@service_key()
def list_examples(gallery: str):
    """A page of the gallery's examples (templates), optionally of one subject."""
    page = max(0, _lenient_int("page", 0))
    size = min(MAX_PAGE_SIZE, _lenient_int("size", DEFAULT_PAGE_SIZE))
    size = size if size > 0 else DEFAULT_PAGE_SIZE
    subject = request.values.get("subject") or None
    with gateway().session() as session:
        rows, total = store.list_templates(
            session, store.get_gallery(session, gallery), subject=subject, offset=page * size, limit=size
        )
    return jsonify(
        {
            "faces": [{"image_id": image_id_for(r.template_id), "subject": r.subject} for r in rows],
            "page_number": page,
            "page_size": size,
            "total_pages": math.ceil(total / size),
            "total_elements": total,
        }
    )


def _lenient_int(name: str, default: int) -> int:
    """Paging values as Spring reads them: anything unreadable is the default."""
    try:
        return int(request.values.get(name, default))
    except ValueError:
        return default


@blueprint.delete("/recognition/faces", strict_slashes=False)
@service_key(write=True)
def delete_examples(gallery: str):
    """Delete every example of ``subject`` (and the subject), or of every subject when none is named."""
    subject = _query_subject(required=False)
    with gateway().session() as session:
        row = store.get_gallery(session, gallery)
        deleted = _delete_examples_of(session, row, subject)
    audit("delete_subject" if subject else "delete_subjects", gallery, subject)
    return jsonify({"deleted": deleted})


def _delete_examples_of(session: Session, gallery: Gallery, subject: str | None) -> int:
    """Delete the examples of one subject or of all; returns how many live ones went."""
    if subject is None:
        _, live = store.list_templates(session, gallery, limit=0)  # limit 0: count only
        store.delete_all_subjects(session, gallery)
        return live
    try:
        owner = store.get_subject(session, gallery, subject)
    except errors.UnknownSubject:
        return 0
    live = len(store.subject_templates(session, owner))
    store.delete_subject(session, owner)
    return live


@blueprint.delete("/recognition/faces/<image_id>")
@service_key(write=True)
def delete_example(gallery: str, image_id: str):
    """Delete one example by id: its ciphertext goes at once (the row stays as a tombstone)."""
    with gateway().session() as session:
        template, subject = _live_example(session, gallery, image_id)
        store.delete_template(session, template)
    audit("delete_template", gallery, subject)
    return jsonify({"image_id": image_id, "subject": subject})


@blueprint.post("/recognition/faces/<image_id>/verify")
@service_key()
def verify_example(gallery: str, image_id: str):
    """Score every face of the upload against one example, under encryption."""
    started = time.perf_counter()
    options = FaceOptions.from_request()
    image = _image()
    with gateway().session() as session:
        template, subject = _live_example(session, gallery, image_id)
    limit_subject_verification(gallery, subject)
    try:
        scored = gateway().verify_template(gallery, template.id, image)
    except errors.NotFound as exc:
        raise _image_missing(image_id) from exc
    faces = options.pick(_usable(scored), lambda s: (s.face.box, s.face.score))
    audit("verify", gallery, subject)
    disclosure = Disclosure.for_request()
    threshold = disclosure.threshold(None, template.model_version)
    result = [
        {
            "box": box_json(s.face.box, s.face.score),
            "subject": subject,
            "similarity": disclosure.verdict_similarity(s.similarity, threshold, compreface_similarity),
        }
        for s in faces
    ]
    return _face_reply(result, options, started)


def _usable(scored: list[FaceScore]) -> list[FaceScore]:
    """Faces that could be compared; if none could, the first one's quality reason is the error."""
    usable = [s for s in scored if s.similarity is not None]
    if scored and not usable:
        raise translate(errors.PoorQuality(scored[0].quality_reason))
    return usable


# -- recognition ----------------------------------------------------------------------------


@blueprint.post("/recognition/recognize", strict_slashes=False)
@service_key()
def recognize(gallery: str):
    """Every face of the upload with its ``prediction_count`` most similar subjects."""
    started = time.perf_counter()
    options = FaceOptions.from_request()
    disclosure = Disclosure.for_request()
    asked = _int_param("prediction_count", 1, 1, Code.INCORRECT_PREDICTION_COUNT)
    top_k = disclosure.top_k(min(MAX_TOP_K, asked))
    threshold = disclosure.threshold(None)
    image = _image()
    faces = gateway().identify(gallery, image, top_k=top_k, threshold=threshold)
    faces = options.pick(faces, lambda f: (f.box, f.score))
    audit("identify", gallery)
    return _face_reply([_recognized(f, disclosure, threshold) for f in faces], options, started)


def _recognized(face: IdentifiedFace, disclosure: Disclosure, threshold: float | None) -> dict[str, Any]:
    """A face of a recognition answer with the candidates ``disclosure`` lets the key see."""
    body: dict[str, Any] = {
        "box": box_json(face.box, face.score),
        "subjects": [
            {"subject": c.subject, "similarity": c.similarity}
            for c in disclosure.candidates(face.candidates, threshold, compreface_similarity)
        ],
    }
    if face.quality_reason:
        body["note"] = f"face not matched: {face.quality_reason}"
    return body


# -- subjects -------------------------------------------------------------------------------


@blueprint.post("/recognition/subjects", strict_slashes=False)
@service_key(write=True)
def create_subject(gallery: str):
    """Create a subject with no example yet."""
    name = _json_subject()
    with gateway().session() as session:
        row = store.get_gallery(session, gallery)
        try:
            store.get_subject(session, row, name)
        except errors.UnknownSubject:
            store.get_or_create_subject(session, row, name)
        else:
            raise CompreFaceError(400, Code.SUBJECT_ALREADY_EXISTS, "Subject already exists")
    audit("create_subject", gallery, name)
    return jsonify({"subject": name}), 201


@blueprint.get("/recognition/subjects", strict_slashes=False)
@service_key()
def list_subject_names(gallery: str):
    """The names of the gallery's subjects."""
    with gateway().session() as session:
        subjects = store.list_subjects(session, store.get_gallery(session, gallery))
    return jsonify({"subjects": [s["subject"] for s in subjects]})


@blueprint.put("/recognition/subjects/<path:subject>")
@service_key(write=True)
def rename_subject(gallery: str, subject: str):
    """Rename a subject; a name already taken merges the two subjects, as CompreFace does."""
    body = request.get_json(silent=True, force=True)
    new_name = body.get("subject") if isinstance(body, dict) else None
    if not isinstance(new_name, str) or not new_name.strip() or new_name == subject:
        return jsonify({"updated": False})
    checked_subject(new_name)
    with gateway().session() as session:
        row = store.get_gallery(session, gallery)
        try:
            source = store.get_subject(session, row, subject)
        except errors.UnknownSubject as exc:
            raise _subject_missing(subject) from exc
        store.rename_subject(session, row, source, new_name)
    audit("rename_subject", gallery, subject)
    return jsonify({"updated": True})


@blueprint.delete("/recognition/subjects/<path:subject>")
@service_key(write=True)
def delete_subject(gallery: str, subject: str):
    """Delete a subject with every example (ciphertext) it owns."""
    with gateway().session() as session:
        try:
            owner = store.get_subject(session, store.get_gallery(session, gallery), subject)
        except errors.UnknownSubject as exc:
            raise _subject_missing(subject) from exc
        store.delete_subject(session, owner)
    audit("delete_subject", gallery, subject)
    return jsonify({"subject": subject})


@blueprint.delete("/recognition/subjects", strict_slashes=False)
@service_key(write=True)
def delete_all_subjects(gallery: str):
    """Delete every subject of the gallery with all their examples."""
    with gateway().session() as session:
        deleted = store.delete_all_subjects(session, store.get_gallery(session, gallery))
    audit("delete_subjects", gallery)
    return jsonify({"deleted": deleted})


# -- verification and detection services ------------------------------------------------------


@blueprint.post("/verification/verify", strict_slashes=False)
@service_key()
def verify_images(gallery: str):
    """The main face of ``source_image`` against every face of ``target_image``."""
    started = time.perf_counter()
    options = FaceOptions.from_request()
    source, target = _image("source_image"), _image("target_image")
    source_face, scored = gateway().compare(source, target)
    matches = options.pick(_usable(scored), lambda s: (s.face.box, s.face.score))
    audit("verify", gallery)
    item: dict[str, Any] = {
        "source_image_face": {"box": box_json(source_face.box, source_face.score)},
        "face_matches": [
            {"box": box_json(s.face.box, s.face.score), "similarity": compreface_similarity(s.similarity)}
            for s in matches
        ],
    }
    if options.status:
        for face in (item["source_image_face"], *item["face_matches"]):
            face["execution_time"] = _execution_time(started)
        item["plugins_versions"] = _plugins_versions()
    return jsonify(_with_plugin_note({"result": [item]}, options))


@blueprint.post("/detection/detect", strict_slashes=False)
@service_key()
def detect(gallery: str):
    """Every face of the upload with its box and detector probability."""
    started = time.perf_counter()
    options = FaceOptions.from_request()
    faces = options.pick(gateway().detect(_image()), lambda f: (f.box, f.score))
    audit("detect", gallery)
    return _face_reply([{"box": box_json(f.box, f.score)} for f in faces], options, started)
