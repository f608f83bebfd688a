"""Key sets in the store: the deployment's fingerprint, and the public key sets of galleries.

The deployment's key set is the fingerprint of the gateway's CKKS context, in ``key_sets``. The
gateway records it at start (:func:`announce_key_set`) and key rotation replaces it
(:func:`set_key_set`). A worker whose public context belongs to another key set refuses to start,
and stops if the deployment's key set changes under it (:func:`check_key_set`; see
``docs/reliability.md``).

A gallery with keys of its own (or a client's) has its serialized public context in
``public_key_set_parts``, in parts of :data:`PART_BYTES` (:func:`save_public_key_set`); whoever
encrypts or scores for that gallery loads it by fingerprint, checked (:class:`PublicContexts`).
Workers may only read both tables.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from veilface.crypto.public import PublicContext, fingerprint_of
from veilface.errors import KeyMismatch
from veilface.store.db import session_scope, upsert_once
from veilface.store.models import DEPLOYMENT_KEY_SET, KeySet, PublicKeySetPart, utcnow

#: Bytes per stored part: a public key set (~16 MB) is cut in a few, each well under MySQL's
#: ``max_allowed_packet`` (16 MiB by default), one INSERT per part.
PART_BYTES = 4 * 1024 * 1024
#: Public contexts a process keeps loaded (each holds its Galois keys: tens of MB in memory).
CACHED_CONTEXTS = 8


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


def save_public_key_set(session: Session, blob: bytes) -> str:
    """Store a serialized public context in parts, in the caller's transaction; return its fingerprint.

    Idempotent: a key set already stored (same fingerprint, so the same bytes) is left as it is.
    """
    fingerprint = fingerprint_of(blob)
    stored = select(PublicKeySetPart.part).where(PublicKeySetPart.fingerprint == fingerprint).limit(1)
    if session.scalar(stored) is not None:
        return fingerprint
    for part, start in enumerate(range(0, len(blob), PART_BYTES)):
        chunk = blob[start : start + PART_BYTES]
        session.add(PublicKeySetPart(fingerprint=fingerprint, part=part, data=chunk))
        session.flush()  # one INSERT per part: a batched one would exceed the packet limit
    return fingerprint


def load_public_key_set(session: Session, fingerprint: str) -> bytes:
    """The serialized public context stored under ``fingerprint``.

    Raises :class:`KeyMismatch` if none is stored, or if its parts do not hash to ``fingerprint``
    (a part missing, reordered or altered).
    """
    parts = session.scalars(
        select(PublicKeySetPart.data)
        .where(PublicKeySetPart.fingerprint == fingerprint)
        .order_by(PublicKeySetPart.part)
    ).all()
    if not parts:
        raise KeyMismatch(f"no public key set {fingerprint[:12]} is stored")
    blob = b"".join(parts)
    if fingerprint_of(blob) != fingerprint:
        raise KeyMismatch(f"the stored public key set {fingerprint[:12]} does not match its fingerprint")
    return blob


def delete_public_key_set(session: Session, fingerprint: str) -> int:
    """Delete every part of the public key set ``fingerprint``; returns how many there were."""
    parts = delete(PublicKeySetPart).where(PublicKeySetPart.fingerprint == fingerprint)
    return session.execute(parts).rowcount


class PublicContexts:
    """Public contexts of gallery key sets, loaded from the store on first use and kept (LRU).

    Each is checked twice: its parts hash to the fingerprint asked for (:func:`load_public_key_set`),
    and :class:`PublicContext` refuses one that holds a secret key. Safe across threads.
    """

    def __init__(self, sessions: sessionmaker[Session], size: int = CACHED_CONTEXTS):
        self._sessions = sessions
        self._size = size
        self._loaded: OrderedDict[str, PublicContext] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, fingerprint: str) -> PublicContext:
        """The public context of key set ``fingerprint``; :class:`KeyMismatch` if it is not stored."""
        with self._lock:
            context = self._loaded.get(fingerprint)
            if context is not None:
                self._loaded.move_to_end(fingerprint)
                return context
        with session_scope(self._sessions) as session:
            context = PublicContext.from_bytes(load_public_key_set(session, fingerprint))
        with self._lock:
            self._loaded[fingerprint] = context
            while len(self._loaded) > self._size:
                self._loaded.popitem(last=False)
        return context
