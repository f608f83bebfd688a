"""The routes of the CompreFace-compatible API: face collection, recognition, subjects, services."""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy.orm import Session

from veilface import errors
from veilface.api.auth import audit, limit_subject_verification
from veilface.api.compreface.auth import service_key
from veilface.api.compreface.errors import (
    NO_FACE_MESSAGE,
    TOO_MANY_FACES_MESSAGE,
    Code,
    CompreFaceError,
    register,
    translate,
)
from veilface.api.compreface.ids import image_id_for, template_id_of
from veilface.api.compreface.params import (
    FaceOptions,
    det_prob_threshold,
    json_subject,
    paging_int,
    prediction_count,
    query_subject,
    required_json_subject,
    uploaded_image,
)
from veilface.api.compreface.replies import (
    box_json,
    compreface_similarity,
    execution_time,
    face_reply,
    plugins_versions,
    with_plugin_note,
)
from veilface.api.disclosure import Disclosure
from veilface.api.gateway import FaceScore, IdentifiedFace
from veilface.api.params import MAX_TOP_K, checked_subject, current_gateway
from veilface.store import galleries as store
from veilface.store.models import Gallery, Template

blueprint = Blueprint("compreface", __name__, url_prefix="/api/v1")
register(blueprint)  # CompreFace error bodies for every failure in these routes

#: Page size of ``GET /recognition/faces`` when none is asked for, and the largest served.
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 2000


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


# -- face collection: examples of subjects --------------------------------------------------


@blueprint.post("/recognition/faces", strict_slashes=False)
@service_key(write=True)
def add_example(gallery: str):
    """Enroll one image (one face) for a subject, created on first use."""
    subject = query_subject(required=True)
    threshold = det_prob_threshold()
    image = uploaded_image()
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
    faces = current_gateway().detect(image)
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
    return current_gateway().enroll(gallery, subject, [image], main_face=main_face)["template_ids"][0]


@blueprint.get("/recognition/faces", strict_slashes=False)
@service_key()
def list_examples(gallery: str):
    """A page of the gallery's examples (templates), optionally of one subject."""
    page = max(0, paging_int("page", 0))
    size = min(MAX_PAGE_SIZE, paging_int("size", DEFAULT_PAGE_SIZE))
    size = size if size > 0 else DEFAULT_PAGE_SIZE
    subject = request.values.get("subject") or None
    with current_gateway().session() as session:
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


@blueprint.delete("/recognition/faces", strict_slashes=False)
@service_key(write=True)
def delete_examples(gallery: str):
    """Delete every example of ``subject`` (and the subject), or of every subject when none is named."""
    subject = query_subject(required=False)
    with current_gateway().session() as session:
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
    with current_gateway().session() as session:
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
    image = uploaded_image()
    with current_gateway().session() as session:
        template, subject = _live_example(session, gallery, image_id)
    limit_subject_verification(gallery, subject)
    try:
        scored = current_gateway().verify_template(gallery, template.id, image)
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
    return face_reply(result, options, started)


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
    asked = prediction_count()
    top_k = disclosure.top_k(min(MAX_TOP_K, asked))
    threshold = disclosure.threshold(None)
    image = uploaded_image()
    faces = current_gateway().identify(gallery, image, top_k=top_k, threshold=threshold)
    faces = options.pick(faces, lambda f: (f.box, f.score))
    audit("identify", gallery)
    return face_reply([_recognized(f, disclosure, threshold) for f in faces], options, started)


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
    name = required_json_subject()
    with current_gateway().session() as session:
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
    with current_gateway().session() as session:
        subjects = store.list_subjects(session, store.get_gallery(session, gallery))
    return jsonify({"subjects": [s["subject"] for s in subjects]})


@blueprint.put("/recognition/subjects/<path:subject>")
@service_key(write=True)
def rename_subject(gallery: str, subject: str):
    """Rename a subject; a name already taken merges the two subjects, as CompreFace does."""
    new_name = json_subject()
    if new_name is None or new_name == subject:
        return jsonify({"updated": False})
    checked_subject(new_name)
    with current_gateway().session() as session:
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
    with current_gateway().session() as session:
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
    with current_gateway().session() as session:
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
    source, target = uploaded_image("source_image"), uploaded_image("target_image")
    source_face, scored = current_gateway().compare(source, target)
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
            face["execution_time"] = execution_time(started)
        item["plugins_versions"] = plugins_versions()
    return jsonify(with_plugin_note({"result": [item]}, options))


@blueprint.post("/detection/detect", strict_slashes=False)
@service_key()
def detect(gallery: str):
    """Every face of the upload with its box and detector probability."""
    started = time.perf_counter()
    options = FaceOptions.from_request()
    faces = options.pick(current_gateway().detect(uploaded_image()), lambda f: (f.box, f.score))
    audit("detect", gallery)
    return face_reply([{"box": box_json(f.box, f.score)} for f in faces], options, started)
