"""Galleries with keys of their own: creation, deletion (crypto-shredding) and re-keying of one.

A gallery created with ``{"keys": "own"}`` is encrypted under a key set of its own: its public
context in the store (:mod:`veilface.store.keysets`), its secret key in one file of the gateway's
keyring (:class:`veilface.crypto.secret.GalleryKeyring`, passed in: this module never touches the
secret key API). Deleting the gallery deletes that file, so every ciphertext it left anywhere
(backups, copies) can no longer be decrypted. Re-keying works as the deployment's rotation does
(:mod:`veilface.admin.rotation`): a new key set, the old ciphertexts dropped, the subjects kept to be
enrolled again, the old secret key destroyed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from veilface import errors
from veilface.admin.rotation import drop_ciphertexts
from veilface.store import galleries as store
from veilface.store.db import session_scope
from veilface.store.keysets import delete_public_key_set, save_public_key_set
from veilface.store.models import AuditEntry, Gallery

#: The key modes ``PUT /v1/galleries/{g}`` accepts as ``keys``, and the mode each one makes.
REQUESTED_KEYS = {"deployment": "deployment", "own": "gallery"}
#: How the API shows each key mode as ``keys``.
SHOWN_KEYS = {"deployment": "deployment", "gallery": "own", "client": "client"}


class Keyring(Protocol):
    """What this module needs of the gateway's keyring of gallery secret keys."""

    def create(self) -> tuple[str, bytes]: ...

    def destroy(self, fingerprint: str) -> bool: ...


@dataclass(frozen=True)
class GalleryRotation:
    gallery: str
    old_fingerprint: str
    new_fingerprint: str
    templates_dropped: int
    subjects_to_reenroll: int


def key_mode_for(keys: object) -> str:
    """The key mode a request's ``keys`` asks for (``BadRequest`` for anything else)."""
    if not isinstance(keys, str) or keys not in REQUESTED_KEYS:
        raise errors.BadRequest(f"keys must be one of {', '.join(REQUESTED_KEYS)}")
    return REQUESTED_KEYS[keys]


def _check_mode(gallery: Gallery, key_mode: str) -> None:
    if gallery.key_mode != key_mode:
        raise errors.KeyModeConflict(
            f"gallery {gallery.name!r} exists with {gallery.key_mode} keys; a gallery's keys never change "
            "mode (delete it and create it again)"
        )


def ensure_gallery(sessions: sessionmaker[Session], keyring: Keyring, name: str, key_mode: str) -> None:
    """Create gallery ``name`` in ``key_mode`` ('deployment' or 'gallery') unless it exists;
    :class:`~veilface.errors.KeyModeConflict` if it exists in another mode.

    A key set of its own is generated outside any transaction (seconds); if another request created
    the gallery meanwhile, the new key set is destroyed and that gallery's mode is checked instead.
    """
    with session_scope(sessions) as session:
        existing = session.scalar(select(Gallery).where(Gallery.name == name))
        if existing is not None or key_mode == "deployment":
            _check_mode(existing or store.get_or_create_gallery(session, name), key_mode)
            return
    fingerprint, public = keyring.create()
    try:
        with session_scope(sessions) as session:
            save_public_key_set(session, public)
            session.add(Gallery(name=name, key_mode=key_mode, key_fingerprint=fingerprint))
            session.flush()
    except IntegrityError:
        keyring.destroy(fingerprint)
        with session_scope(sessions) as session:
            _check_mode(store.get_gallery(session, name), key_mode)
    except BaseException:
        keyring.destroy(fingerprint)
        raise


def delete_gallery(sessions: sessionmaker[Session], keyring: Keyring, name: str) -> bool:
    """Delete gallery ``name`` with every ciphertext, its public key set and, for a gallery with
    keys of its own, its secret key file; returns whether a secret key was destroyed.

    The file goes before the transaction commits: if the commit fails the gallery stays, but
    unreadable, and deleting it again finishes the job.
    """
    with session_scope(sessions) as session:
        gallery = store.get_gallery(session, name)
        key_mode, fingerprint = gallery.key_mode, gallery.key_fingerprint
        store.delete_gallery(session, gallery)
        session.flush()
        shared = select(Gallery.id).where(Gallery.key_fingerprint == fingerprint).limit(1)
        if fingerprint is not None and session.scalar(shared) is None:  # a client may use one key set twice
            delete_public_key_set(session, fingerprint)
        if key_mode == "gallery":
            keyring.destroy(fingerprint)
    return key_mode == "gallery"


def rotate_gallery_keys(sessions: sessionmaker[Session], keyring: Keyring, name: str) -> GalleryRotation:
    """Give gallery ``name`` (one with keys of its own) a new key set and drop its ciphertexts.

    Order, as for the deployment: the new key set is made first; one transaction drops the
    gallery's templates, sentinels and blocks, stores the new public key set in place of the old one
    and writes an audit entry; then the old secret key is destroyed. Workers load the new key set
    from the next task on (its fingerprint travels with each); subjects stay, to be enrolled again.
    """
    with session_scope(sessions) as session:
        gallery = store.get_gallery(session, name)
        if gallery.key_mode != "gallery":
            raise errors.KeyModeConflict(
                f"gallery {name!r} has {gallery.key_mode} keys: only a gallery with keys of its own is "
                "re-keyed alone (the deployment's: veilface keys rotate)"
            )
    new, public = keyring.create()
    try:
        with session_scope(sessions) as session:
            gallery = session.scalar(select(Gallery).where(Gallery.name == name).with_for_update())
            if gallery is None:
                raise errors.UnknownGallery(f"gallery {name!r} does not exist")
            old = gallery.key_fingerprint
            dropped, subjects = drop_ciphertexts(session, gallery.id)
            save_public_key_set(session, public)
            gallery.key_fingerprint = new
            delete_public_key_set(session, old)
            session.add(AuditEntry(api_key_id=None, action="rotate_gallery_keys", gallery=name, outcome="ok"))
    except BaseException:
        keyring.destroy(new)
        raise
    keyring.destroy(old)
    return GalleryRotation(name, old, new, dropped, subjects)
