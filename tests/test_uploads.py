"""What a client key holder may upload: its public key set and fresh ciphertexts, nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from veilface.crypto.codec import Kind
from veilface.crypto.params import DEFAULT_PARAMS
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import generate_keyset
from veilface.crypto.uploads import MAX_KEY_SET_BYTES, check_public_key_set, check_uploaded_ciphertext
from veilface.errors import InvalidCiphertext, InvalidKeySet


@pytest.fixture(scope="module")
def public_blob(key_dir: Path) -> bytes:
    return (key_dir / "public.ctx").read_bytes()


@pytest.fixture(scope="module")
def context(public_blob: bytes) -> PublicContext:
    return check_public_key_set(public_blob, DEFAULT_PARAMS)


def _context(degree: int, primes: list[int], *, galois: bool = True, secret: bool = False) -> bytes:
    context = ts.context(ts.SCHEME_TYPE.CKKS, degree, coeff_mod_bit_sizes=primes)
    context.global_scale = 2**40
    if galois:
        context.generate_galois_keys()
    return context.serialize(save_secret_key=secret)


def test_the_deployments_own_public_key_set_is_accepted(context: PublicContext, public_blob: bytes):
    assert context.params == DEFAULT_PARAMS
    assert len(public_blob) < MAX_KEY_SET_BYTES


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"not a context", "not a serialized TenSEAL public context"),
        (_context(8192, [60, 40, 40, 60], galois=False, secret=True), "holds a secret key"),
        (_context(8192, [60, 40, 40, 60], galois=False), "Galois keys"),
        (_context(4096, [40, 20, 40], galois=False), "unusable public context"),
    ],
    ids=["garbage", "secret-key", "no-galois-keys", "other-parameters"],
)
def test_a_key_set_the_engine_cannot_use_is_refused_with_the_reason(blob: bytes, reason: str):
    with pytest.raises(InvalidKeySet, match=reason) as refused:
        check_public_key_set(blob, DEFAULT_PARAMS)
    assert refused.value.status == 400 and refused.value.code == "invalid_key_set"


def test_a_key_set_with_every_rotation_key_is_too_large():
    # TenSEAL's default Galois keys (every power of two, both directions) make 35 MB.
    with pytest.raises(InvalidKeySet, match="exceeds"):
        check_public_key_set(_context(8192, [60, 40, 40, 60]), DEFAULT_PARAMS)


def test_fresh_ciphertexts_of_the_key_set_pass(context: PublicContext):
    vector = np.random.default_rng(0).standard_normal(512)
    template = encrypt_template(context, vector, slot=7)
    probe = encrypt_probe(context, vector)
    assert check_uploaded_ciphertext(context, template, Kind.TEMPLATE, 512) == template
    assert check_uploaded_ciphertext(context, probe, Kind.PROBE, 512) == probe


def test_ciphertexts_of_another_kind_dim_key_or_size_are_refused(context: PublicContext, tmp_path: Path):
    generate_keyset(tmp_path)
    stranger = PublicContext.load(tmp_path / "public.ctx")
    vector = np.random.default_rng(1).standard_normal(512)
    template = encrypt_template(context, vector, slot=0)
    cases = [
        (template, Kind.PROBE, 512, "expected a probe"),
        (template, Kind.TEMPLATE, 1024, "this gallery's are 1024-D"),
        (encrypt_template(stranger, vector, slot=0), Kind.TEMPLATE, 512, "another key set"),
        (template[:100], Kind.TEMPLATE, 512, "malformed"),
        (template + bytes(1024 * 1024), Kind.TEMPLATE, 512, "exceeds"),
    ]
    for blob, kind, dim, reason in cases:
        with pytest.raises(InvalidCiphertext, match=reason):
            check_uploaded_ciphertext(context, blob, kind, dim)
