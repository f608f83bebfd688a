"""The deployment's key files, and the two symmetric keys of the queues.

``queue.key`` seals images on the embed queue (:mod:`veilface.crypto.sealing`): gateway and embedders.
``task.key`` signs every task message (:mod:`veilface.messaging.signing`): gateway, embedders and
he-matchers. ``sentinel.key`` seals the seeds of the hidden sentinel templates in the database
(:mod:`veilface.store.sentinels`) and picks their slots: the gateway only. All are 256-bit random
keys, written once (mode 0600) by ``veilface keys init``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veilface import errors

QUEUE_KEY = "queue.key"
TASK_KEY = "task.key"
SENTINEL_KEY = "sentinel.key"
#: The symmetric keys, each written by :func:`generate_message_keys`.
SYMMETRIC_KEYS = (QUEUE_KEY, TASK_KEY, SENTINEL_KEY)
#: Every key file of a deployment, as rotation and backup handle them.
KEY_FILES = ("public.ctx", "secret.ctx", *SYMMETRIC_KEYS)


def generate_message_keys(folder: Path) -> None:
    """Write a fresh ``queue.key``, ``task.key`` and ``sentinel.key`` into ``folder``, each unless it
    exists."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SYMMETRIC_KEYS:
        path = folder / name
        if path.exists():
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(AESGCM.generate_key(bit_length=256))


def read_key(path: Path) -> bytes:
    """The key in ``path``; ``Unavailable`` naming the fix if it is missing."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise errors.Unavailable(f"key file {path} is missing; run 'veilface keys init'") from exc
