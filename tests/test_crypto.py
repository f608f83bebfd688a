"""Key handling, serialization and the public/secret split of veilface.crypto."""

from __future__ import annotations

import stat

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from veilface.crypto.codec import Kind
from veilface.crypto.params import CkksParams
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import SecretContext, generate_keyset
from veilface.errors import InvalidCiphertext, KeyMismatch, SecretKeyInPublicContext
from veilface.search.delta import load_template, merge_groups, score_delta
from veilface.search.engine import MaskCache, prepare_probe


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("keys")
    fingerprint = generate_keyset(key_dir)
    return key_dir, fingerprint


@pytest.fixture(scope="module")
def ctx(keys):
    return PublicContext.load(keys[0] / "public.ctx")


@pytest.fixture(scope="module")
def secret(keys):
    return SecretContext.load(keys[0] / "secret.ctx")


def test_params_enforce_the_128_bit_bound():
    assert sum(CkksParams().coeff_mod_bit_sizes) <= 218
    with pytest.raises(ValueError):
        CkksParams(coeff_mod_bit_sizes=(60, 60, 60, 60))
    with pytest.raises(ValueError):
        CkksParams(coeff_mod_bit_sizes=(60, 40, 40, 30))


def test_key_files_and_fingerprints(keys, ctx, secret):
    key_dir, fingerprint = keys
    assert stat.S_IMODE((key_dir / "secret.ctx").stat().st_mode) == 0o600
    assert ctx.fingerprint == fingerprint == secret.fingerprint
    secret.check_fingerprint(ctx.fingerprint)
    assert ctx.params.galois_steps == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def test_public_context_cannot_decrypt(keys, ctx):
    context = ts.context_from((keys[0] / "public.ctx").read_bytes())
    assert not context.has_secret_key()
    vector = ts.ckks_vector(context, [1.0, 2.0])
    with pytest.raises(ValueError):
        vector.decrypt()


def test_secret_context_refused_as_public(keys):
    blob = (keys[0] / "secret.ctx").read_bytes()
    tenseal_part = blob[len(b"VFSK1\n") + 64 :]
    with pytest.raises(SecretKeyInPublicContext):
        PublicContext.from_bytes(tenseal_part)
    with pytest.raises(InvalidCiphertext):
        PublicContext.from_bytes(blob)


def test_fingerprint_mismatch_detected(tmp_path, ctx, secret):
    other_fingerprint = generate_keyset(tmp_path)
    other = PublicContext.load(tmp_path / "public.ctx")
    with pytest.raises(KeyMismatch):
        secret.check_fingerprint(other_fingerprint)
    foreign = other.dumps(other.encrypt(np.ones(4), other.score_level), Kind.SCORE)
    with pytest.raises(InvalidCiphertext):
        secret.decrypt_scores(foreign, "delta")
    with pytest.raises(InvalidCiphertext):
        ctx.loads(encrypt_probe(other, np.ones(128)), Kind.PROBE, level=ctx.top_level)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda blob: b"",
        lambda blob: b"garbage" * 50,
        lambda blob: blob[:100],
        lambda blob: blob[:-1000],
        lambda blob: blob[:14] + bytes(len(blob) - 14),
        lambda blob: blob[:40] + b"\xff" * 64 + blob[104:],
        lambda blob: b"XXXX" + blob[4:],
    ],
)
def test_malformed_ciphertexts_rejected(ctx, mutate):
    blob = encrypt_probe(ctx, np.ones(128))
    with pytest.raises(InvalidCiphertext):
        ctx.loads(mutate(blob), Kind.PROBE, level=ctx.top_level)


def test_wrong_kind_or_level_rejected(ctx, secret):
    template = encrypt_template(ctx, np.ones(128), 3)
    with pytest.raises(InvalidCiphertext):
        ctx.loads(template, Kind.PROBE, level=ctx.top_level)
    with pytest.raises(InvalidCiphertext):
        ctx.loads(template, Kind.TEMPLATE, level=ctx.packed_level)
    with pytest.raises(InvalidCiphertext):
        secret.decrypt_scores(template, "delta")


def _pair_score(ctx: PublicContext, vector: np.ndarray) -> sealapi.Ciphertext:
    """The matcher's genuine 1:1 score of ``vector`` against itself (score level, delta scale)."""
    dim = len(vector)
    probe = prepare_probe(ctx, encrypt_probe(ctx, vector), dim)
    groups = merge_groups(ctx, dim, [(0, load_template(ctx, encrypt_template(ctx, vector, 0), dim))])
    return score_delta(ctx, groups, probe, MaskCache(ctx, dim))


def _stolen_template(ctx: PublicContext, vector: np.ndarray, level) -> sealapi.Ciphertext:
    """What a lying matcher makes of a stored template: rotated, switched down to ``level``."""
    template = ctx.loads(encrypt_template(ctx, vector, 5), Kind.TEMPLATE, level=ctx.top_level)
    rotated = ctx.rotate(template, 5)
    ctx.evaluator.mod_switch_to_inplace(rotated, level)
    return rotated


def test_genuine_scores_decrypt_with_their_own_scale_only(ctx, secret):
    vector = np.random.default_rng(1).standard_normal(128)
    score = ctx.dumps(_pair_score(ctx, vector), Kind.SCORE)
    assert secret.decrypt_scores(score, "delta")[0].real == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InvalidCiphertext, match="scale"):
        secret.decrypt_scores(score, "block")


def test_a_template_relabelled_as_a_score_is_not_decrypted(ctx, secret):
    vector = np.random.default_rng(2).standard_normal(128)
    genuine = _pair_score(ctx, vector)
    for level in (ctx.top_level, ctx.packed_level):
        stolen = _stolen_template(ctx, vector, level)
        stolen.scale = genuine.scale
        with pytest.raises(InvalidCiphertext, match="level"):
            secret.decrypt_scores(ctx.dumps(stolen, Kind.SCORE), "delta")
    at_score_level = _stolen_template(ctx, vector, ctx.score_level)
    for scale in (at_score_level.scale, genuine.scale * 48, genuine.scale * (1 + 1e-12)):
        at_score_level.scale = scale
        with pytest.raises(InvalidCiphertext, match="scale"):
            secret.decrypt_scores(ctx.dumps(at_score_level, Kind.SCORE), "delta")


def test_template_vectors_are_validated(ctx):
    with pytest.raises(ValueError):
        encrypt_probe(ctx, np.ones(100))
    with pytest.raises(ValueError):
        encrypt_template(ctx, np.zeros(128), 0)
    with pytest.raises(ValueError):
        encrypt_template(ctx, np.ones(128), ctx.params.block_capacity)
