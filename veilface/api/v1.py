"""HTTP API v1: galleries, subjects, enrollment, identification and verification."""

from __future__ import annotations

import re
from dataclasses import asdict

from flask import Blueprint, current_app, g, jsonify, request

from veilface import errors
from veilface.api.auth import audit, limit_subject_verification, require_key
from veilface.api.disclosure import Disclosure
from veilface.api.gateway import Gateway, IdentifiedFace
from veilface.store import galleries as store

blueprint = Blueprint("v1", __name__, url_prefix="/v1")

_GALLERY_NAME = re.compile(r"^[^\x00-\x1f\x7f/]+$")
_SUBJECT_NAME = re.compile(r"^[^\x00-\x1f\x7f]+$")
MAX_TOP_K = 100


def gateway() -> Gateway:
    return current_app.extensions["veilface"]


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
    images = uploaded_images(field)
    if len(images) != 1:
        raise errors.BadRequest(f"send exactly one file in field {field!r}")
    return images[0]


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.values.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise errors.BadRequest(f"{name} must be an integer") from exc
    if not low <= value <= high:
        raise errors.BadRequest(f"{name} must be between {low} and {high}")
    return value


def face_choice() -> bool:
    """Whether ``?face=main`` asks to enroll the main face of a photo with several (absent: refuse)."""
    raw = request.args.get("face", "")
    if raw not in ("", "main"):
        raise errors.BadRequest(f"face must be 'main' or absent, got {raw!r}")
    return raw == "main"


def float_arg(name: str) -> float | None:
    raw = request.values.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise errors.BadRequest(f"{name} must be a number") from exc
    if not -1.0 <= value <= 1.0:
        raise errors.BadRequest(f"{name} must be a cosine similarity in [-1, 1]")
    return value


@blueprint.post("/galleries/<gallery>/subjects/<path:subject>/faces")
@require_key("admin")
def enroll(gallery: str, subject: str):
    checked_gallery(gallery)
    checked_subject(subject)
    images = uploaded_images("image")
    main_face = face_choice()
    try:
        body = gateway().enroll(gallery, subject, images, main_face=main_face)
    except errors.VeilfaceError as exc:
        audit("enroll", gallery, subject, exc.code)
        raise
    audit("enroll", gallery, subject)
    return jsonify(body), 201


@blueprint.post("/galleries/<gallery>/identify")
@require_key("read")
def identify(gallery: str):
    image = one_image("image")
    disclosure = Disclosure.for_request()
    top_k = disclosure.top_k(int_arg("top_k", 5, 1, MAX_TOP_K))
    threshold = disclosure.threshold(float_arg("threshold"))
    faces = gateway().identify(gallery, image, top_k=top_k, threshold=threshold)
    audit("identify", gallery)
    return jsonify({"faces": [_face_json(f, disclosure, threshold) for f in faces]})


def _face_json(face: IdentifiedFace, disclosure: Disclosure, threshold: float | None) -> dict:
    body = asdict(face)
    body["candidates"] = [asdict(c) for c in disclosure.candidates(face.candidates, threshold)]
    if body["quality_reason"] is None:
        del body["quality_reason"]
    return body


@blueprint.post("/galleries/<gallery>/subjects/<path:subject>/verify")
@require_key("read")
def verify_subject(gallery: str, subject: str):
    limit_subject_verification(gallery, subject)
    result = gateway().verify_subject(gallery, subject, one_image("image"))
    disclosure = Disclosure.for_request()
    result["similarity"] = disclosure.verdict_similarity(result["similarity"], result["threshold"])
    audit("verify", gallery, subject)
    return jsonify(result)


@blueprint.post("/verify")
@require_key("read")
def verify_pair():
    result = gateway().verify_pair(one_image("image1"), one_image("image2"))
    audit("verify", None)
    return jsonify(result)


@blueprint.get("/galleries")
@require_key("read")
def list_galleries():
    with gateway().session() as session:
        galleries = store.list_galleries(session)
    if g.api_key_gallery is not None:  # a gallery-bound key sees its own gallery only
        galleries = [entry for entry in galleries if entry["name"] == g.api_key_gallery]
    return jsonify({"galleries": galleries})


@blueprint.put("/galleries/<gallery>")
@require_key("admin")
def configure_gallery(gallery: str):
    """Create a gallery with options: ``{"projection": "pca128"}`` keeps compact templates."""
    checked_gallery(gallery)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("projection"), str | None):
        raise errors.BadRequest('send JSON {"projection": NAME or null}')
    projection = body.get("projection")
    gw = gateway()
    if projection is not None:
        gw.registry.projection(projection)  # 404 for an unknown projection
    with gw.session() as session:
        row = store.configure_gallery(session, gallery, projection)
        result = {"gallery": row.name, "projection": row.projection}
    audit("configure_gallery", gallery)
    return jsonify(result)


@blueprint.get("/galleries/<gallery>/subjects")
@require_key("read")
def list_subjects(gallery: str):
    gw = gateway()
    active = gw.registry.active().version
    with gw.session() as session:
        subjects = store.list_subjects(session, store.get_gallery(session, gallery))
    for entry in subjects:
        entry["needs_reenrollment"] = active not in entry["model_versions"]
    return jsonify({"gallery": gallery, "active_model_version": active, "subjects": subjects})


@blueprint.get("/galleries/<gallery>/subjects/<path:subject>")
@require_key("read")
def get_subject(gallery: str, subject: str):
    gw = gateway()
    with gw.session() as session:
        row = store.get_subject(session, store.get_gallery(session, gallery), subject)
        templates = store.subject_templates(session, row)
        body = {
            "subject": row.name,
            "created_at": row.created_at.isoformat(),
            "templates": [
                {
                    "template_id": t.id,
                    "model_version": t.model_version,
                    "created_at": t.created_at.isoformat(),
                }
                for t in templates
            ],
        }
    body["needs_reenrollment"] = gw.registry.active().version not in {
        t["model_version"] for t in body["templates"]
    }
    return jsonify(body)


@blueprint.delete("/galleries/<gallery>/subjects/<path:subject>")
@require_key("admin")
def delete_subject(gallery: str, subject: str):
    with gateway().session() as session:
        row = store.get_subject(session, store.get_gallery(session, gallery), subject)
        removed = store.delete_subject(session, row)
    audit("delete_subject", gallery, subject)
    return jsonify({"subject": subject, "deleted_templates": removed})


@blueprint.delete("/galleries/<gallery>")
@require_key("admin")
def delete_gallery(gallery: str):
    with gateway().session() as session:
        store.delete_gallery(session, store.get_gallery(session, gallery))
    audit("delete_gallery", gallery)
    return jsonify({"gallery": gallery, "deleted": True})
