"""Images travel through the broker sealed with AES-GCM, so a dump of Redis shows no face.

The queue key (``queue.key`` beside the CKKS keys) is shared by the gateway and the
embedders only; matchers never see images and never get it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veilface import errors

_NONCE_BYTES = 12


def generate_queue_key(path: Path) -> None:
    """Write a fresh 256-bit queue key to ``path`` (mode 0600) unless one exists."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(AESGCM.generate_key(bit_length=256))


class PayloadSealer:
    """Seals and opens image payloads with the deployment's queue key."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> PayloadSealer:
        try:
            return cls(path.read_bytes())
        except FileNotFoundError as exc:
            raise errors.Unavailable(f"queue key {path} is missing; run 'veilface keys init'") from exc

    def seal(self, data: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, None)

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None)
        except (InvalidTag, ValueError) as exc:
            raise errors.BadRequest("image payload failed authentication (wrong queue key?)") from exc
