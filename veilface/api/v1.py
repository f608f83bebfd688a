"""HTTP API v1: galleries, subjects, enrollment, identification and verification."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, g, jsonify, request

from veilface import errors
from veilface.admin import gallery_keys
from veilface.api.auth import audit, limit_subject_verification, require_key
from veilface.api.disclosure import Disclosure
from veilface.api.gallery_info import gallery_info, keys_json
from veilface.api.gateway import IdentifiedFace
from veilface.api.params import (
    MAX_TOP_K,
    checked_gallery,
    checked_subject,
    current_gateway,
    float_arg,
    int_arg,
    json_object,
    one_image,
    uploaded_images,
)
from veilface.store import galleries as store

blueprint = Blueprint("v1", __name__, url_prefix="/v1")


def face_choice() -> bool:
    """Whether ``?face=main`` asks to enroll the main face of a photo with several (absent: refuse)."""
    raw = request.args.get("face", "")
    if raw not in ("", "main"):
        raise errors.BadRequest(f"face must be 'main' or absent, got {raw!r}")
    return raw == "main"


@blueprint.post("/galleries/<gallery>/subjects/<path:subject>/faces")
@require_key("admin")
def enroll(gallery: str, subject: str):
    checked_gallery(gallery)
    checked_subject(subject)
    images = uploaded_images("image")
    main_face = face_choice()
    try:
        body = current_gateway().enroll(gallery, subject, images, main_face=main_face)
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
    threshold = disclosure.threshold(float_arg("threshold", -1.0, 1.0, "a cosine similarity"))
    faces = current_gateway().identify(gallery, image, top_k=top_k, threshold=threshold)
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
    result = current_gateway().verify_subject(gallery, subject, one_image("image"))
    disclosure = Disclosure.for_request()
    result["similarity"] = disclosure.verdict_similarity(result["similarity"], result["threshold"])
    audit("verify", gallery, subject)
    return jsonify(result)


@blueprint.post("/verify")
@require_key("read")
def verify_pair():
    result = current_gateway().verify_pair(one_image("image1"), one_image("image2"))
    audit("verify", None)
    return jsonify(result)


@blueprint.get("/galleries")
@require_key("read")
def list_galleries():
    with current_gateway().session() as session:
        galleries = store.list_galleries(session)
    if g.api_key_gallery is not None:  # a gallery-bound key sees its own gallery only
        galleries = [entry for entry in galleries if entry["name"] == g.api_key_gallery]
    return jsonify({"galleries": galleries})


@blueprint.put("/galleries/<gallery>")
@require_key("admin")
def configure_gallery(gallery: str):
    """Create a gallery with options: ``{"projection": "pca128"}`` keeps compact templates,
    ``{"keys": "own"}`` gives it a key set of its own (``"deployment"``: the deployment's, the default).
    A gallery's keys are chosen at creation: asking an existing one for others is a 409."""
    checked_gallery(gallery)
    body = json_object()
    if body is None or not isinstance(body.get("projection"), str | None):
        raise errors.BadRequest('send JSON {"projection": NAME or null, "keys": "deployment" or "own"}')
    projection = body.get("projection")
    key_mode = gallery_keys.key_mode_for(body["keys"]) if "keys" in body else None
    gw = current_gateway()
    if projection is not None:
        gw.registry.projection(projection)  # 404 for an unknown projection
    if key_mode is not None:
        gallery_keys.ensure_gallery(gw.sessions, gw.keyring, gallery, key_mode)
    with gw.session() as session:
        row = store.configure_gallery(session, gallery, projection)
        result = {"gallery": row.name, "projection": row.projection, **keys_json(row)}
    audit("configure_gallery", gallery)
    return jsonify(result)


@blueprint.get("/galleries/<gallery>")
@require_key("read")
def get_gallery(gallery: str):
    """One gallery: its options, its keys, and the active model (:func:`gallery_info`)."""
    gw = current_gateway()
    with gw.session() as session:
        body = gallery_info(store.get_gallery(session, gallery), gw.registry.active())
    return jsonify(body)


@blueprint.get("/galleries/<gallery>/subjects")
@require_key("read")
def list_subjects(gallery: str):
    gw = current_gateway()
    active = gw.registry.active().version
    with gw.session() as session:
        subjects = store.list_subjects(session, store.get_gallery(session, gallery))
    for entry in subjects:
        entry["needs_reenrollment"] = active not in entry["model_versions"]
    return jsonify({"gallery": gallery, "active_model_version": active, "subjects": subjects})


@blueprint.get("/galleries/<gallery>/subjects/<path:subject>")
@require_key("read")
def get_subject(gallery: str, subject: str):
    gw = current_gateway()
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
    with current_gateway().session() as session:
        row = store.get_subject(session, store.get_gallery(session, gallery), subject)
        removed = store.delete_subject(session, row)
    audit("delete_subject", gallery, subject)
    return jsonify({"subject": subject, "deleted_templates": removed})


@blueprint.delete("/galleries/<gallery>")
@require_key("admin")
def delete_gallery(gallery: str):
    """Delete a gallery with every ciphertext; one with keys of its own loses its secret key too
    (``keys_destroyed``: any copy of its ciphertexts is unreadable from then on)."""
    gw = current_gateway()
    destroyed = gallery_keys.delete_gallery(gw.sessions, gw.keyring, gallery)
    audit("delete_gallery", gallery)
    return jsonify({"gallery": gallery, "deleted": True, "keys_destroyed": destroyed})
