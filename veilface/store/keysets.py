"""The deployment's key set: the fingerprint of the gateway's CKKS context, in ``key_sets``.

The gateway records it at start (:func:`announce_key_set`) and key rotation replaces it
(:func:`set_key_set`). A worker whose public context belongs to another key set refuses to start,
and stops if the deployment's key set changes under it (:func:`check_key_set`; see
``docs/reliability.md``). Workers may only read the table.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from veilface.errors import KeyMismatch
from veilface.store.db import upsert_once
from veilface.store.models import DEPLOYMENT_KEY_SET, KeySet, utcnow


def set_key_set(session: Session, fingerprint: str) -> None:
    """Record ``fingerprint`` as the deployment's key set, in the caller's transaction."""
    row = session.get(KeySet, DEPLOYMENT_KEY_SET)
    if row is None:
        session.add(KeySet(name=DEPLOYMENT_KEY_SET, fingerprint=fingerprint))
    else:
        row.fingerprint, row.announced_at = fingerprint, utcnow()


def announce_key_set(sessions: sessionmaker[Session], fingerprint: str) -> None:
    """Record ``fingerprint`` as the deployment's key set (the gateway, at start)."""
    upsert_once(sessions, lambda session: set_key_set(session, fingerprint))


def deployment_key_set(session: Session) -> str | None:
    """The key fingerprint the gateway announced, ``None`` before any gateway started."""
    row = session.get(KeySet, DEPLOYMENT_KEY_SET)
    return None if row is None else row.fingerprint


def check_key_set(session: Session, fingerprint: str) -> None:
    """Raise :class:`KeyMismatch` if the deployment announced a key set other than ``fingerprint``."""
    expected = deployment_key_set(session)
    if expected is not None and expected != fingerprint:
        raise KeyMismatch(
            f"public context {fingerprint[:12]} is not this deployment's key set {expected[:12]} "
            "(announced by the gateway); install the deployment's public.ctx"
        )
