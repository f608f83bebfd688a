"""Gateway only: key generation, the secret context and decryption of score ciphertexts.

This is the one module that touches the secret key. Workers never import it; a static test
enforces that only gateway-side code does. It decrypts score ciphertexts, never templates.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from veilface.crypto import codec
from veilface.crypto.codec import Kind
from veilface.crypto.params import CkksParams
from veilface.crypto.public import fingerprint_of
from veilface.errors import InvalidCiphertext, KeyMismatch

#: What produced a score ciphertext: a packed block (``score_block``) or delta groups
#: (``score_delta``, also the 1:1 pair score).
ScoreSource = Literal["block", "delta"]

_SECRET_MAGIC = b"VFSK1\n"


def _new_keyset(params: CkksParams) -> tuple[bytes, str, bytes]:
    """A fresh key set: the public context, its fingerprint and the secret file's content.

    The public context holds the public key, the relinearisation key and Galois keys for the
    power-of-two steps below ``params.max_dim`` only. The secret file holds the secret and
    public keys and the fingerprint of its public context.
    """
    context = ts.context(
        ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes)
    )
    context.global_scale = params.scale
    seal = context.seal_context().data
    galois_tool = seal.key_context_data().galois_tool()
    keygen = sealapi.KeyGenerator(seal, context.data.secret_key())
    context.data.generate_galois_keys()
    keygen.create_galois_keys(
        [galois_tool.get_elt_from_step(step) for step in params.galois_steps], context.data.galois_keys()
    )
    public_blob = context.serialize(save_public_key=True, save_secret_key=False)
    fingerprint = fingerprint_of(public_blob)
    secret_blob = context.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return public_blob, fingerprint, _SECRET_MAGIC + fingerprint.encode() + secret_blob


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, readable by its owner only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def generate_keyset(key_dir: str | Path, params: CkksParams | None = None) -> str:
    """Create ``public.ctx`` and ``secret.ctx`` (mode 0600) in ``key_dir``; return the fingerprint."""
    public_blob, fingerprint, secret_file = _new_keyset(params or CkksParams())
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    _write_private(key_dir / "secret.ctx", secret_file)
    (key_dir / "public.ctx").write_bytes(public_blob)
    return fingerprint


def _genuine_score_scales(scale: float, *, top_prime: float, packed_prime: float) -> dict[str, float]:
    """The exact scale (as SEAL computes it, in doubles) of each kind of genuine score.

    A block score multiplies a diagonal and a probe rotation (both at ``scale``, packed
    level) and rescales once by the packed level's last prime. A delta score multiplies a
    template and the probe (top level), rescales by the top level's last prime, multiplies
    a mask encoded at ``scale`` and rescales by the packed level's last prime.
    """
    return {
        "block": scale * scale / packed_prime,
        "delta": scale * scale / top_prime * scale / packed_prime,
    }


class SecretContext:
    """The gateway's secret key: decrypts score ciphertexts of its own key set."""

    def __init__(self, fingerprint: str, context: ts.Context):
        self.fingerprint = fingerprint
        self._seal = context.seal_context().data
        self._encoder = sealapi.CKKSEncoder(self._seal)
        self._decryptor = sealapi.Decryptor(self._seal, context.data.secret_key())
        top = self._seal.first_context_data()
        packed = top.next_context_data()
        self._score_level = [list(packed.next_context_data().parms_id())]
        self._score_scales = _genuine_score_scales(
            context.global_scale,
            top_prime=float(top.parms().coeff_modulus()[-1].value()),
            packed_prime=float(packed.parms().coeff_modulus()[-1].value()),
        )

    @property
    def slots(self) -> int:
        """Slots per ciphertext (score vectors have this many entries)."""
        return self._encoder.slot_count()

    @classmethod
    def load(cls, path: str | Path) -> SecretContext:
        """Load ``secret.ctx`` written by :func:`generate_keyset`."""
        blob = Path(path).read_bytes()
        header = len(_SECRET_MAGIC) + 64
        if not blob.startswith(_SECRET_MAGIC) or len(blob) <= header:
            raise KeyMismatch("not a Veilface secret context")
        context = ts.context_from(blob[header:])
        if not context.has_secret_key():
            raise KeyMismatch("the secret context holds no secret key")
        return cls(blob[len(_SECRET_MAGIC) : header].decode(), context)

    def check_fingerprint(self, fingerprint: str) -> None:
        """Raise :class:`KeyMismatch` unless ``fingerprint`` (a public context's) is this key set's."""
        if fingerprint != self.fingerprint:
            raise KeyMismatch(
                f"public context {fingerprint[:12]} does not match secret key {self.fingerprint[:12]}"
            )

    def decrypt_scores(self, blob: bytes, source: ScoreSource) -> np.ndarray:
        """Decrypt one score ciphertext (size 2 or 3) into its complex slot vector.

        Only a ciphertext at the score level (the lowest data level) with exactly the scale a
        genuine ``source`` score has is decrypted (see :func:`_genuine_score_scales`); anything
        else, a template or a block diagonal relabelled as a score or an edited scale among
        them, raises :class:`InvalidCiphertext` before the secret key touches it.
        """
        ciphertext = codec.loads(
            blob,
            seal_context=self._seal,
            fingerprint=self.fingerprint,
            kind=Kind.SCORE,
            parms_ids=self._score_level,
            sizes=(2, 3),
        )
        if ciphertext.scale != self._score_scales[source]:
            raise InvalidCiphertext(f"score ciphertext with a scale no {source} score has")
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        return np.asarray(self._encoder.decode_complex(plain))


#: A key-set fingerprint: SHA-256 in lowercase hex (the only names the keyring gives its files).
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class GalleryKeyring:
    """The secret keys of the galleries with keys of their own: one file per key set,
    ``{folder}/{fingerprint}.secret`` (0600, the format of ``secret.ctx``).

    Deleting a file is crypto-shredding: every ciphertext of that key set, wherever a copy went,
    can no longer be decrypted. Loaded keys are kept, but :meth:`get` checks at every call that the
    file still exists, so a key destroyed by one gateway process stops working in all of them.
    """

    def __init__(self, folder: str | Path, params: CkksParams | None = None):
        self.folder = Path(folder)
        self.params = params or CkksParams()
        self._loaded: dict[str, SecretContext] = {}
        self._lock = threading.Lock()

    def path(self, fingerprint: str) -> Path:
        """The file of key set ``fingerprint`` (``ValueError`` for anything but a fingerprint)."""
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise ValueError("a key-set fingerprint is 64 lowercase hex digits")
        return self.folder / f"{fingerprint}.secret"

    def create(self) -> tuple[str, bytes]:
        """A new key set: its secret file is written; returns the fingerprint and the public context
        (for the store, :func:`veilface.store.keysets.save_public_key_set`)."""
        public_blob, fingerprint, secret_file = _new_keyset(self.params)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.path(fingerprint), secret_file)
        return fingerprint, public_blob

    def get(self, fingerprint: str) -> SecretContext:
        """The secret context of key set ``fingerprint``; :class:`KeyMismatch` once its file is gone."""
        path = self.path(fingerprint)
        if not path.is_file():
            with self._lock:
                self._loaded.pop(fingerprint, None)
            raise KeyMismatch(f"the secret key of key set {fingerprint[:12]} is not held here (destroyed?)")
        with self._lock:
            keys = self._loaded.get(fingerprint)
        if keys is None:
            keys = SecretContext.load(path)
            keys.check_fingerprint(fingerprint)
            with self._lock:
                self._loaded[fingerprint] = keys
        return keys

    def destroy(self, fingerprint: str) -> bool:
        """Delete the secret key of ``fingerprint`` (crypto-shredding); whether a file was there."""
        path = self.path(fingerprint)
        with self._lock:
            self._loaded.pop(fingerprint, None)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
