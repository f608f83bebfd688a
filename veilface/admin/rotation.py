"""Key rotation: a new CKKS key set, queue key and task key; the gallery must be enrolled again.

Why re-enrollment, and not re-encryption: every template is a ciphertext under the old key.
Moving it to a new key without ever exposing it needs a key-switching key from the old
secret key to the new one (proxy re-encryption). SEAL computes such keys only internally
(relinearisation and Galois keys); neither SEAL's public API nor TenSEAL exposes them, so
the only available path would be to decrypt the templates, which the gateway never does by
design (it decrypts scores only). Re-encryption would also carry over the deleted templates
still folded into packed blocks, which rotation is the documented way to erase
(crypto-shredding, ``docs/encrypted-search.md``). So rotation drops every ciphertext of the
old key set, keeps galleries and subjects (the list of who must be enrolled again), and
destroys the old secret key unless asked to keep it. It drops the ciphertexts of the galleries with
keys of their own too (their sentinels' seeds are sealed with the old ``sentinel.key``); one such
gallery alone is re-keyed by :func:`veilface.admin.gallery_keys.rotate_gallery_keys`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from veilface.config import Settings
from veilface.crypto.keyfiles import KEY_FILES
from veilface.store.db import session_scope
from veilface.store.keysets import set_key_set
from veilface.store.models import AuditEntry, Block, BlockCiphertext, Template


@dataclass(frozen=True)
class Rotation:
    old_fingerprint: str | None
    new_fingerprint: str
    templates_dropped: int
    subjects_to_reenroll: int
    old_keys_kept_in: Path | None


def rotate_keys(
    settings: Settings,
    sessions: sessionmaker[Session],
    generate: Callable[[Path], str],
    *,
    keep_old: Path | None = None,
) -> Rotation:
    """Replace the key set and drop every ciphertext made with the old one.

    ``generate(folder)`` writes a new ``public.ctx``, ``secret.ctx``, ``queue.key`` and ``task.key`` into
    ``folder`` and returns the fingerprint (the CLI passes the gateway-side key generator:
    this module never touches the secret key API itself).

    Order: the new keys are generated beside the old ones first; then one database
    transaction drops templates and blocks, records the new fingerprint (workers of the old
    key set stop at their next heartbeat) and writes an audit entry; then the new files
    replace the old ones. ``keep_old`` moves the old files there instead of deleting them.
    """
    from veilface.crypto.public import fingerprint_of

    key_dir = settings.keys_path
    key_dir.mkdir(parents=True, exist_ok=True)
    old_public = key_dir / "public.ctx"
    old = fingerprint_of(old_public.read_bytes()) if old_public.is_file() else None
    staging = Path(tempfile.mkdtemp(dir=key_dir, prefix=".rotate-"))
    try:
        new = generate(staging)
        with session_scope(sessions) as session:
            dropped, subjects = drop_ciphertexts(session)
            set_key_set(session, new)
            session.add(AuditEntry(api_key_id=None, action="rotate_keys", outcome="ok"))
        if keep_old is not None:
            keep_old.mkdir(parents=True, exist_ok=True, mode=0o700)
            for name in KEY_FILES:
                if (key_dir / name).exists():
                    shutil.move(key_dir / name, keep_old / name)
        for name in KEY_FILES:
            os.replace(staging / name, key_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Rotation(old, new, dropped, subjects, keep_old)


def drop_ciphertexts(session: Session, gallery_id: int | None = None) -> tuple[int, int]:
    """Delete every template (sentinels included) and packed block of one gallery, or of all, in the
    caller's transaction; subjects stay. Returns the templates dropped (not counting sentinels) and
    the subjects that must be enrolled again."""
    of_templates = [] if gallery_id is None else [Template.gallery_id == gallery_id]
    of_blocks = [] if gallery_id is None else [Block.gallery_id == gallery_id]
    counted = select(func.count(Template.subject_id), func.count(func.distinct(Template.subject_id)))
    dropped, subjects = session.execute(counted.where(*of_templates)).one()
    session.execute(
        delete(BlockCiphertext).where(BlockCiphertext.block_id.in_(select(Block.id).where(*of_blocks)))
    )
    session.execute(delete(Block).where(*of_blocks))
    session.execute(delete(Template).where(*of_templates))
    return dropped or 0, subjects or 0
