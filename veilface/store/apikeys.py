"""API keys: created once, shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import logging
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from veilface import errors
from veilface.store.models import API_KEY_SCOPES, ApiKey, utcnow

log = logging.getLogger(__name__)

#: Name of the key ``VEILFACE_BOOTSTRAP_API_KEY`` creates, reserved for it.
BOOTSTRAP_NAME = "bootstrap"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(
    session: Session, name: str, scope: str, *, gallery: str | None = None, key: str | None = None
) -> str:
    """Store a new key and return it in the clear (the only time it is visible).

    ``key`` lets an operator choose the key; creating the same key twice is a no-op. The name
    :data:`BOOTSTRAP_NAME` is reserved for :func:`sync_bootstrap_key`.
    """
    if name == BOOTSTRAP_NAME:
        raise errors.BadRequest(f"the key name {BOOTSTRAP_NAME!r} is reserved for VEILFACE_BOOTSTRAP_API_KEY")
    return _store_key(session, name, scope, gallery=gallery, key=key)


def sync_bootstrap_key(session: Session, key: str) -> None:
    """Make ``key`` (``VEILFACE_BOOTSTRAP_API_KEY``; empty: none) the only live bootstrap key.

    A bootstrap key whose variable was removed or changed is revoked; a revoked one stays revoked
    even if the variable names it again.
    """
    digest = hash_key(key) if key else None
    live = select(ApiKey).where(ApiKey.name == BOOTSTRAP_NAME, ApiKey.revoked_at.is_(None))
    for row in session.scalars(live):
        if row.key_hash != digest:
            row.revoked_at = utcnow()
            log.warning("revoked bootstrap API key %d: VEILFACE_BOOTSTRAP_API_KEY no longer names it", row.id)
    if key:
        _store_key(session, BOOTSTRAP_NAME, "admin", key=key)


def _store_key(
    session: Session, name: str, scope: str, *, gallery: str | None = None, key: str | None = None
) -> str:
    if scope not in API_KEY_SCOPES:
        raise errors.BadRequest(f"scope must be one of {', '.join(API_KEY_SCOPES)}")
    key = key or secrets.token_urlsafe(32)
    digest = hash_key(key)
    if session.scalar(select(ApiKey).where(ApiKey.key_hash == digest)) is None:
        session.add(ApiKey(name=name, key_hash=digest, scope=scope, gallery=gallery))
    return key


def authenticate(session: Session, key: str) -> ApiKey:
    """The live key matching ``key``; raises Unauthorized otherwise."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        raise errors.Unauthorized("the API key is unknown or revoked")
    return row


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_api_key(session: Session, key_id: int) -> None:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise errors.NotFound(f"no API key with id {key_id}")
    row.revoked_at = utcnow()
