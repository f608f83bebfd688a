"""Galleries whose key the client holds: the server stores and scores ciphertexts it cannot read.

A client-key gallery is created with the client's public key set (checked by
:mod:`veilface.crypto.uploads`, stored in parts by :mod:`veilface.store.keysets`). The client
reserves template positions, encrypts each template for its position with that key set and
uploads the ciphertexts; a search sends the client's probe ciphertexts to the matchers as any
search does and hands back the score ciphertexts, each with the subjects of the slots it
carries, for the client to decrypt, rank and decide (:mod:`veilface.client`). The server sees
no photo, no template and no score: it checks the matchers' answers for their shape only
(:func:`veilface.search.checks.check_shard_answer`), and the client checks the level and
scale of every score before its secret key touches it (``docs/privacy.md``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from veilface import errors
from veilface.api.gallery_info import gallery_info
from veilface.crypto.codec import Kind
from veilface.crypto.uploads import check_public_key_set, check_uploaded_ciphertext
from veilface.messaging.messages import b64decode, b64encode
from veilface.search.layout import place
from veilface.store import galleries as store
from veilface.store.keysets import save_public_key_set
from veilface.store.models import Gallery, Template

if TYPE_CHECKING:
    from veilface.api.gateway import Gateway

#: Template positions one request may reserve, and templates one upload may carry.
MAX_TEMPLATES_PER_REQUEST = 64


@dataclass(frozen=True)
class TemplateUpload:
    """One template ciphertext the client encrypted for its reserved ``(block, slot)``."""

    block: int
    slot: int
    ciphertext: bytes


class ClientGalleries:
    """The operations on client-key galleries, over the gateway's store, registry and matchers."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def create(self, name: str, key_set: bytes) -> dict[str, Any]:
        """Create gallery ``name`` on the client's public ``key_set``; 409 if the name is taken."""
        check_public_key_set(key_set, self.gateway.params)
        with self.gateway.session() as session:
            if session.scalar(select(Gallery.id).where(Gallery.name == name)) is not None:
                raise errors.Conflict(f"gallery {name!r} exists; a client-key gallery is made new")
            fingerprint = save_public_key_set(session, key_set)
            gallery = Gallery(name=name, key_mode="client", key_fingerprint=fingerprint)
            session.add(gallery)
            try:
                session.flush()
            except IntegrityError:  # created meanwhile by another request
                raise errors.Conflict(f"gallery {name!r} exists; a client-key gallery is made new") from None
            return gallery_info(gallery, self.gateway.registry.active())

    def _gallery(self, session, name: str) -> Gallery:
        gallery = store.get_gallery(session, name)
        if gallery.key_mode != "client":
            raise errors.Conflict(f"gallery {name!r} is not a client-key gallery: send photos instead")
        return gallery

    def reserve(self, name: str, count: int) -> dict[str, Any]:
        """``count`` new template positions of the gallery, each ``{"block", "slot"}``."""
        model = self.gateway.registry.active()
        with self.gateway.session() as session:
            gallery = self._gallery(session, name)
            sequences = [store.next_sequence(session, gallery.id, model.version) for _ in range(count)]
        positions = [place(sequence, model.dim, self.gateway.params) for sequence in sequences]
        return {
            "model_version": model.version,
            "dim": model.dim,
            "slots": [{"block": block, "slot": slot} for block, slot in positions],
        }

    def add_templates(self, name: str, subject: str, uploads: list[TemplateUpload]) -> dict[str, Any]:
        """Store the client's template ciphertexts for ``subject`` (created on first use), each at
        a position reserved before and not yet filled; all or nothing."""
        model = self.gateway.registry.active()
        with self.gateway.session() as session:
            gallery = self._gallery(session, name)
            context = self.gateway.public_contexts.get(gallery.key_fingerprint)
            allocated = store.slots_allocated(session, gallery.id, model.version)
            capacity = self.gateway.params.block_capacity
            rows = []
            for upload in uploads:
                if not (
                    0 <= upload.slot < capacity and 0 <= upload.block * capacity + upload.slot < allocated
                ):
                    raise errors.BadRequest(f"block {upload.block} slot {upload.slot} was not reserved")
                check_uploaded_ciphertext(context, upload.ciphertext, Kind.TEMPLATE, model.dim)
            owner = store.get_or_create_subject(session, gallery, subject)
            for upload in uploads:
                rows.append(
                    Template(
                        gallery_id=gallery.id,
                        subject_id=owner.id,
                        model_version=model.version,
                        image_sha256=hashlib.sha256(upload.ciphertext).hexdigest(),
                        block_no=upload.block,
                        slot=upload.slot,
                        state="delta",
                        ciphertext=upload.ciphertext,
                    )
                )
            session.add_all(rows)
            try:
                session.flush()
            except IntegrityError:
                raise errors.Conflict("a position or ciphertext was uploaded already") from None
            gallery_id, fingerprint = gallery.id, gallery.key_fingerprint
            body = {
                "subject": subject,
                "templates": [{"id": r.id, "block": r.block_no, "slot": r.slot} for r in rows],
            }
        self.gateway.maybe_compact(gallery_id, model.version, fingerprint)
        return body

    def search(self, name: str, probes: list[bytes], subject: str | None) -> dict[str, Any]:
        """Score the client's probe ciphertexts on the whole gallery; for each probe, every score
        ciphertext with the ``[slot, subject]`` pairs of the live templates it carries (only
        ``subject``'s when given: a verification)."""
        model = self.gateway.registry.active()
        with self.gateway.session() as session:
            gallery = self._gallery(session, name)
            gallery_id, fingerprint = gallery.id, gallery.key_fingerprint
            if subject is not None:
                store.get_subject(session, gallery, subject)  # 404 for an unknown subject
        context = self.gateway.public_contexts.get(fingerprint)
        for probe in probes:
            check_uploaded_ciphertext(context, probe, Kind.PROBE, model.dim)
        answers, owners = self.gateway.unread_search(
            gallery_id, model.version, [b64encode(p) for p in probes], fingerprint
        )
        return {
            "model_version": model.version,
            "threshold": model.threshold,
            "probes": [
                {
                    "scores": [
                        {
                            "block": result.block_no,
                            "source": result.source,
                            "dim": result.dim,
                            "ciphertext": b64encode(result.ciphertext),
                            "subjects": [
                                [slot, owners[result.block_no, slot].subject]
                                for slot in result.slots
                                if (result.block_no, slot) in owners
                                and subject in (None, owners[result.block_no, slot].subject)
                            ],
                        }
                        for result in results
                    ]
                }
                for results in answers
            ],
        }


def decoded_ciphertexts(values: Any, what: str) -> list[bytes]:
    """A JSON list of base64 ciphertexts, decoded; ``BadRequest`` naming ``what`` otherwise."""
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise errors.BadRequest(f"{what} must be a non-empty list of base64 ciphertexts")
    return [b64decode(v) for v in values]
