"""HTTP API v1 for client-key galleries: the key set, template ciphertexts, encrypted search.

The client (:mod:`veilface.client`, ``veilface client ...``) holds the secret key; these routes
take and return ciphertexts only. :class:`~veilface.api.client_galleries.ClientGalleries` does
the work; ``docs/privacy.md`` says what each party sees.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from veilface import errors
from veilface.api.auth import audit, require_key
from veilface.api.client_galleries import MAX_TEMPLATES_PER_REQUEST, TemplateUpload, decoded_ciphertexts
from veilface.api.params import checked_gallery, checked_subject, current_gateway, json_object
from veilface.messaging.messages import b64decode, is_int

blueprint = Blueprint("client_keys", __name__, url_prefix="/v1")


@blueprint.put("/galleries/<gallery>/client-keys")
@require_key("admin")
def create_client_gallery(gallery: str):
    """Create a client-key gallery; the body is the client's serialized public key set."""
    checked_gallery(gallery)
    key_set = request.get_data(cache=False)
    if not key_set:
        raise errors.BadRequest("send the public key set as the body (application/octet-stream)")
    body = current_gateway().clients.create(gallery, key_set)
    audit("create_client_gallery", gallery)
    return jsonify(body), 201


@blueprint.post("/galleries/<gallery>/slots")
@require_key("admin")
def reserve_slots(gallery: str):
    """Reserve ``{"count": n}`` template positions for the client to encrypt templates for."""
    checked_gallery(gallery)
    body = json_object() or {}
    count = body.get("count")
    if not is_int(count) or not 1 <= count <= MAX_TEMPLATES_PER_REQUEST:
        raise errors.BadRequest(f'send JSON {{"count": n}} with n in [1, {MAX_TEMPLATES_PER_REQUEST}]')
    return jsonify(current_gateway().clients.reserve(gallery, count)), 201


@blueprint.post("/galleries/<gallery>/subjects/<path:subject>/templates")
@require_key("admin")
def add_templates(gallery: str, subject: str):
    """Store ``{"templates": [{"block", "slot", "ciphertext"}]}`` for ``subject``."""
    checked_gallery(gallery)
    checked_subject(subject)
    body = json_object() or {}
    items = body.get("templates")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_TEMPLATES_PER_REQUEST:
        raise errors.BadRequest(f"send 1 to {MAX_TEMPLATES_PER_REQUEST} templates in a JSON list 'templates'")
    uploads = [_upload(item) for item in items]
    try:
        result = current_gateway().clients.add_templates(gallery, subject, uploads)
    except errors.VeilfaceError as exc:
        audit("enroll", gallery, subject, exc.code)
        raise
    audit("enroll", gallery, subject)
    return jsonify(result), 201


def _upload(item: object) -> TemplateUpload:
    if not isinstance(item, dict) or not all(is_int(item.get(k)) for k in ("block", "slot")):
        raise errors.BadRequest('each template is {"block": int, "slot": int, "ciphertext": base64}')
    if not isinstance(item.get("ciphertext"), str):
        raise errors.BadRequest("a template's ciphertext must be base64 text")
    return TemplateUpload(item["block"], item["slot"], b64decode(item["ciphertext"]))


@blueprint.post("/galleries/<gallery>/search")
@require_key("read")
def search(gallery: str):
    """Score ``{"probes": [base64, ...], "subject": optional}``; the answer holds score ciphertexts."""
    checked_gallery(gallery)
    body = json_object() or {}
    gw = current_gateway()
    limit = gw.settings.max_faces_per_request or MAX_TEMPLATES_PER_REQUEST
    probes = decoded_ciphertexts(body.get("probes"), "probes")
    if len(probes) > limit:
        raise errors.BadRequest(f"at most {limit} probes per search")
    subject = body.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise errors.BadRequest("subject must be a string")
    if subject is not None:
        checked_subject(subject)
    result = gw.clients.search(gallery, probes, subject)
    audit("verify" if subject else "identify", gallery, subject)
    return jsonify(result)
