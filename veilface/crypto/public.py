"""The public side of the key set: what the embedder and the matcher load.

A :class:`PublicContext` holds the public key, the relinearisation key and the Galois keys
of the deployment, never the secret key (one that does is refused). It encrypts templates
and probes, serializes ciphertexts and runs the evaluator operations of the engine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from veilface.crypto import codec
from veilface.crypto.codec import Kind
from veilface.crypto.layout import BlockLayout
from veilface.crypto.params import CkksParams
from veilface.errors import InvalidCiphertext, SecretKeyInPublicContext


def fingerprint_of(public_blob: bytes) -> str:
    """The key-set fingerprint: SHA-256 (hex) of the serialized public context."""
    return hashlib.sha256(public_blob).hexdigest()


class PublicContext:
    """Public keys, evaluator and the three levels of the engine (top, packed, score)."""

    def __init__(self, public_blob: bytes):
        try:
            context = ts.context_from(public_blob)
        except Exception as exc:
            raise InvalidCiphertext(f"unreadable public context: {exc}") from None
        if context.has_secret_key() or context.is_private():
            raise SecretKeyInPublicContext()
        self._context = context
        self.fingerprint = fingerprint_of(public_blob)
        self.seal = context.seal_context().data
        key_data = self.seal.key_context_data().parms()
        self.params = CkksParams(
            poly_modulus_degree=key_data.poly_modulus_degree(),
            coeff_mod_bit_sizes=tuple(m.bit_count() for m in key_data.coeff_modulus()),
            scale_bits=round(np.log2(context.global_scale)),
            max_dim=1 << context.data.galois_keys().size(),
        )
        top = self.seal.first_context_data()
        packed = top.next_context_data()
        self.top_level = top.parms_id()
        self.packed_level = packed.parms_id()
        self.score_level = packed.next_context_data().parms_id()
        #: The prime dropped by the first rescale; masks encoded at this scale keep 2^40 exact.
        self.top_prime = float(top.parms().coeff_modulus()[-1].value())
        self.evaluator = sealapi.Evaluator(self.seal)
        self.encoder = sealapi.CKKSEncoder(self.seal)
        self.galois_keys = context.data.galois_keys()
        self.relin_keys = context.data.relin_keys()
        self._encryptor = sealapi.Encryptor(self.seal, context.data.public_key())

    @classmethod
    def from_bytes(cls, public_blob: bytes) -> PublicContext:
        """Load a serialized public context (refuses one with a secret key)."""
        return cls(public_blob)

    @classmethod
    def load(cls, path: str | Path) -> PublicContext:
        """Load ``public.ctx`` (refuses a context file that holds a secret key)."""
        return cls(Path(path).read_bytes())

    @property
    def slots(self) -> int:
        return self.params.slots

    def layout(self, dim: int) -> BlockLayout:
        """The block layout for templates of dimension ``dim``."""
        self.params.check_dim(dim)
        return BlockLayout(self.slots, dim)

    def encode(self, values: np.ndarray, level, scale: float | None = None) -> sealapi.Plaintext:
        """CKKS-encode real or complex ``values`` at ``level`` (default scale 2^scale_bits)."""
        plain = sealapi.Plaintext()
        values = np.asarray(values)
        data = values.tolist() if np.isrealobj(values) else values.astype(np.complex128).tolist()
        self.encoder.encode(data, level, self.params.scale if scale is None else scale, plain)
        return plain

    def encrypt(self, values: np.ndarray, level) -> sealapi.Ciphertext:
        """Public-key encryption of ``values`` directly at ``level``."""
        ciphertext = sealapi.Ciphertext()
        self._encryptor.encrypt(self.encode(values, level), ciphertext)
        return ciphertext

    def rotate(self, ciphertext: sealapi.Ciphertext, steps: int) -> sealapi.Ciphertext:
        """Rotate left by ``steps`` (``0 <= steps < slots``) as a chain of power-of-two rotations.

        Steps below ``max_dim`` cost one key switch per set bit; larger ones (a right rotation
        written as a left one) repeat the largest key, ``max_dim / 2``. Returns ``ciphertext``
        itself when ``steps`` is 0.
        """
        if not 0 <= steps < self.slots:
            raise ValueError(f"rotation by {steps} outside [0, {self.slots})")
        largest = self.params.max_dim // 2
        repeats, steps = divmod(steps, largest) if steps >= self.params.max_dim else (0, steps)
        result = ciphertext
        for bit in [largest] * repeats + [1 << k for k in range(steps.bit_length()) if steps >> k & 1]:
            rotated = sealapi.Ciphertext()
            self.evaluator.rotate_vector(result, bit, self.galois_keys, rotated)
            result = rotated
        return result

    def copy(self, ciphertext: sealapi.Ciphertext) -> sealapi.Ciphertext:
        """An independent copy of ``ciphertext``."""
        duplicate = sealapi.Ciphertext()
        self.evaluator.mod_switch_to(ciphertext, ciphertext.parms_id(), duplicate)
        return duplicate

    def dumps(self, ciphertext: sealapi.Ciphertext, kind: Kind, dim: int = 0) -> bytes:
        """Serialize a ciphertext of this key set."""
        return codec.dumps(ciphertext, kind, self.fingerprint, dim)

    def loads(self, blob: bytes, kind: Kind, *, level, sizes: tuple[int, ...] = (2,)) -> sealapi.Ciphertext:
        """Parse a ciphertext of this key set; :class:`InvalidCiphertext` on anything else."""
        return codec.loads(
            blob,
            seal_context=self.seal,
            fingerprint=self.fingerprint,
            kind=kind,
            parms_ids=[list(level)],
            sizes=sizes,
        )


def _unit_vector(vector: np.ndarray, ctx: PublicContext) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 1 or not np.all(np.isfinite(vector)):
        raise ValueError("a template must be a finite 1-D vector")
    ctx.params.check_dim(vector.shape[0])
    norm = np.linalg.norm(vector)
    if norm == 0:
        raise ValueError("a template must not be the zero vector")
    return vector / norm


def encrypt_template(ctx: PublicContext, vector: np.ndarray, slot: int) -> bytes:
    """Encrypt one template (L2-normalised) in its delta form for in-block ``slot``.

    ``slot`` is the position inside its block, ``0 <= slot < ctx.params.block_capacity``.
    """
    template = _unit_vector(vector, ctx)
    layout = ctx.layout(template.shape[0])
    ciphertext = ctx.encrypt(layout.template_vector(template, slot), ctx.top_level)
    return ctx.dumps(ciphertext, Kind.TEMPLATE, layout.dim)


def encrypt_probe(ctx: PublicContext, vector: np.ndarray) -> bytes:
    """Encrypt one probe (L2-normalised), replicated over all slots: one ciphertext."""
    probe = _unit_vector(vector, ctx)
    layout = ctx.layout(probe.shape[0])
    return ctx.dumps(ctx.encrypt(layout.probe_vector(probe), ctx.top_level), Kind.PROBE, layout.dim)
