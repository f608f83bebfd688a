"""Images travel through the broker sealed with AES-GCM, so a dump of Redis shows no face.

The queue key (``queue.key`` beside the CKKS keys) is shared by the gateway and the
embedders only; matchers never see images and never get it.

A sealed image is bound to its use: the task name, the gallery and subject of an enrollment,
the image's SHA-256 and an expiry are its associated data. The embedder opens it with the
binding it rebuilds from the task it runs and that task's own arguments, so an image sealed
for a probe does not open as an enrollment, nor one for gallery A in gallery B, nor after it
expired; and the opened bytes must hash to the image hash the task carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veilface import errors
from veilface.crypto.keyfiles import read_key

_NONCE_BYTES = 12


@dataclass(frozen=True)
class ImageBinding:
    """What a sealed image may be used for: one task, gallery and subject, until ``expires``."""

    task: str
    image_sha256: str
    #: Unix time (seconds) after which the image no longer opens.
    expires: int
    gallery_id: int | None = None
    subject: str | None = None

    def associated_data(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


class PayloadSealer:
    """Seals and opens image payloads with the deployment's queue key."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> PayloadSealer:
        return cls(read_key(path))

    def seal(self, image: bytes, binding: ImageBinding) -> bytes:
        """``image`` encrypted and authenticated together with ``binding``."""
        return self.seal_data(image, binding.associated_data())

    def seal_data(self, data: bytes, associated: bytes) -> bytes:
        """``data`` encrypted and authenticated together with ``associated`` (any bytes)."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, associated)

    def open_data(self, sealed: bytes, associated: bytes, what: str = "a sealed payload") -> bytes:
        """What :meth:`seal_data` sealed with exactly ``associated``; ``MessageRefused`` (naming
        ``what``) otherwise."""
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, associated)
        except (InvalidTag, ValueError) as exc:
            raise errors.MessageRefused(
                f"{what} failed authentication (sealed for another task, or another queue key)"
            ) from exc

    def open(self, sealed: bytes, binding: ImageBinding, *, now: float | None = None) -> bytes:
        """The image sealed under exactly ``binding``; ``MessageRefused`` if it expired, was
        sealed for anything else or with another key, or does not hash to ``binding.image_sha256``."""
        if binding.expires < (time.time() if now is None else now):
            raise errors.MessageRefused("the sealed image expired")
        image = self.open_data(sealed, binding.associated_data(), "the sealed image")
        if hashlib.sha256(image).hexdigest() != binding.image_sha256:
            raise errors.MessageRefused("the sealed image does not match the image hash of its task")
        return image
