"""The client's key set on disk: ``secret.ctx`` and ``public.ctx``, both mode 0600.

The client is a key holder like the gateway: it generates its key set with the deployment's
generator (:func:`veilface.crypto.secret.generate_keyset`, the deployment's CKKS parameters) and
decrypts score ciphertexts with :class:`~veilface.crypto.secret.SecretContext`. Only
``public.ctx`` ever leaves the folder (uploaded when a gallery is created).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from veilface.crypto.params import DEFAULT_PARAMS
from veilface.crypto.public import PublicContext
from veilface.crypto.secret import SecretContext, generate_keyset
from veilface.errors import VeilfaceError

PUBLIC_FILE = "public.ctx"
SECRET_FILE = "secret.ctx"


class KeyDirError(VeilfaceError):
    """The client key folder is missing, incomplete or already holds a key set."""

    code, status = "client_keys", 400


def init_keys(folder: str | Path) -> str:
    """Write a new client key set into ``folder`` (created if needed); return its fingerprint.

    Both files are mode 0600; a folder that already holds either file is refused, so that a key
    set, and every gallery enrolled under it, is never lost by mistake.
    """
    folder = Path(folder)
    present = [name for name in (SECRET_FILE, PUBLIC_FILE) if (folder / name).exists()]
    if present:
        raise KeyDirError(
            f"{folder} already holds a key set ({', '.join(present)}); refusing to overwrite it"
        )
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fingerprint = generate_keyset(folder, DEFAULT_PARAMS)
    os.chmod(folder / PUBLIC_FILE, 0o600)
    return fingerprint


@dataclass(frozen=True)
class ClientKeys:
    """A loaded client key set: the public context that encrypts, the secret one that decrypts."""

    folder: Path
    public: PublicContext
    secret: SecretContext

    @property
    def fingerprint(self) -> str:
        """The key set's fingerprint (SHA-256 of ``public.ctx``), as the server names the gallery's keys."""
        return self.public.fingerprint

    def public_blob(self) -> bytes:
        """The serialized public context (public, relinearisation and Galois keys) to upload."""
        return (self.folder / PUBLIC_FILE).read_bytes()

    @classmethod
    def load(cls, folder: str | Path) -> ClientKeys:
        """Load the key set ``init_keys`` wrote; :class:`KeyDirError` naming the fix when it is missing."""
        folder = Path(folder)
        missing = [name for name in (SECRET_FILE, PUBLIC_FILE) if not (folder / name).is_file()]
        if missing:
            raise KeyDirError(
                f"no client key set in {folder} (missing {', '.join(missing)}); "
                f"run 'veilface client keys init --dir {folder}'"
            )
        public = PublicContext.load(folder / PUBLIC_FILE)
        secret = SecretContext.load(folder / SECRET_FILE)
        secret.check_fingerprint(public.fingerprint)
        return cls(folder, public, secret)
