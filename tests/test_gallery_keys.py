"""Galleries with keys of their own, on the running stack (MariaDB, Redis, gunicorn, workers).

Two galleries created with ``{"keys": "own"}`` enroll the same LFW photos. Neither one's secret key
reads the other's ciphertexts: shown on the ciphertexts themselves, decrypted with the raw secret
key of the wrong gallery (the fingerprint checks bypassed), which gives noise uncorrelated with the
right values, while the gateway's normal path refuses them outright. Deleting a gallery destroys its
key file, after which a ciphertext copied out of it before is noise to every secret key left in the
gateway's key folder. Identify finds the right person in such a gallery, and ``veilface galleries
rotate-keys`` re-keys one gallery alone.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import requests
import tenseal as ts
import tenseal.sealapi as sealapi
from sqlalchemy import create_engine, select

from tests.support import enroll_main_face, match_of_main_face, veilface_cli
from veilface.crypto.codec import peek_dim
from veilface.crypto.public import PublicContext, encrypt_probe
from veilface.crypto.secret import GalleryKeyring
from veilface.errors import InvalidCiphertext, KeyMismatch
from veilface.search.pair import score_pair
from veilface.store.db import session_factory, session_scope
from veilface.store.keysets import load_public_key_set
from veilface.store.models import Gallery, PublicKeySetPart, Subject, Template

pytestmark = pytest.mark.stack

GALLERIES = ("gk-alpha", "gk-beta")
PEOPLE = 3
#: Bytes before the SEAL ciphertext in a Veilface ciphertext (magic, kind, log dim, key prefix).
CODEC_HEADER = 14
#: Bytes before the TenSEAL context in a secret key file (magic, fingerprint).
SECRET_HEADER = 6 + 64


class RawSecretKey:
    """A secret key file used the way an attacker holding it would: no fingerprint or kind check,
    any ciphertext of the same parameters decrypted into its slot values."""

    def __init__(self, path: Path, scratch: Path):
        context = ts.context_from(path.read_bytes()[SECRET_HEADER:])
        self.seal = context.seal_context().data
        self.decryptor = sealapi.Decryptor(self.seal, context.data.secret_key())
        self.encoder = sealapi.CKKSEncoder(self.seal)
        self.scratch = scratch

    def decrypt(self, blob: bytes) -> np.ndarray:
        self.scratch.write_bytes(blob[CODEC_HEADER:])
        ciphertext = sealapi.Ciphertext()
        ciphertext.load(self.seal, str(self.scratch))
        plain = sealapi.Plaintext()
        self.decryptor.decrypt(ciphertext, plain)
        return np.asarray(self.encoder.decode_complex(plain))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = np.concatenate([a.real, a.imag]), np.concatenate([b.real, b.imag])
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


@pytest.fixture(scope="module")
def db(mysql_redis_env):
    engine = create_engine(mysql_redis_env["VEILFACE_DATABASE_URL"])
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def key_folder(mysql_redis_env) -> Path:
    return Path(mysql_redis_env["VEILFACE_KEY_DIR"])


@pytest.fixture(scope="module")
def own_galleries(stack, admin_headers, lfw_people) -> dict[str, str]:
    """Both galleries with keys of their own, the first photo of the same people in each;
    ``gallery -> key fingerprint``."""
    fingerprints = {}
    for gallery in GALLERIES:
        r = requests.put(
            f"{stack.url}/v1/galleries/{gallery}", headers=admin_headers, json={"keys": "own"}, timeout=120
        )
        assert r.status_code == 200, r.text
        assert r.json()["keys"] == "own"
        fingerprints[gallery] = r.json()["key_fingerprint"]
        for photos in lfw_people[:PEOPLE]:
            enroll_main_face(stack, admin_headers, photos[0], gallery)
    return fingerprints


def templates_of(db, gallery: str) -> dict[str, bytes]:
    """``subject -> delta template ciphertext`` of a gallery (one photo each here)."""
    with session_scope(db) as session:
        rows = session.execute(
            select(Subject.name, Template.ciphertext)
            .join(Subject, Subject.id == Template.subject_id)
            .join(Gallery, Gallery.id == Template.gallery_id)
            .where(Gallery.name == gallery)
        ).all()
    return {name: blob for name, blob in rows if blob is not None}


def test_each_gallery_has_its_own_key_set_and_key_file(stack, admin_headers, own_galleries, key_folder):
    fingerprints = set(own_galleries.values())
    deployment = PublicContext.load(key_folder / "public.ctx").fingerprint
    assert len(fingerprints) == 2 and deployment not in fingerprints
    for gallery, fingerprint in own_galleries.items():
        body = requests.get(f"{stack.url}/v1/galleries/{gallery}", headers=admin_headers, timeout=30).json()
        assert (body["keys"], body["key_fingerprint"]) == ("own", fingerprint)
        path = key_folder / "galleries" / f"{fingerprint}.secret"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_gallerys_keys_are_chosen_once(stack, admin_headers, own_galleries):
    put = f"{stack.url}/v1/galleries/{GALLERIES[0]}"
    r = requests.put(put, headers=admin_headers, json={"keys": "deployment"}, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "key_mode_conflict")
    r = requests.put(put, headers=admin_headers, json={"keys": "own"}, timeout=30)  # as it is: fine
    assert r.status_code == 200 and r.json()["key_fingerprint"] == own_galleries[GALLERIES[0]]
    r = requests.put(
        f"{stack.url}/v1/galleries/gk-other", headers=admin_headers, json={"keys": "x"}, timeout=30
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_request")


def test_neither_gallerys_secret_key_reads_the_others_ciphertexts(own_galleries, db, key_folder, tmp_path):
    """The same photo in both galleries: each template decrypts under its own gallery's key into a
    unit-norm template window, the same values in both; under the other gallery's key it is noise,
    uncorrelated with the right values. A score under one key is refused by the other's normal path."""
    alpha, beta = (own_galleries[g] for g in GALLERIES)
    keys = {
        fp: RawSecretKey(key_folder / "galleries" / f"{fp}.secret", tmp_path / "ct") for fp in (alpha, beta)
    }
    in_alpha, in_beta = templates_of(db, GALLERIES[0]), templates_of(db, GALLERIES[1])
    assert set(in_alpha) == set(in_beta) and len(in_alpha) == PEOPLE
    for subject in in_alpha:
        right_alpha = keys[alpha].decrypt(in_alpha[subject])
        right_beta = keys[beta].decrypt(in_beta[subject])
        assert abs(np.linalg.norm(right_alpha) - 1) < 1e-3 and abs(np.linalg.norm(right_beta) - 1) < 1e-3
        # the same face: the same template values, wherever each gallery placed it
        assert np.allclose(np.sort(np.abs(right_alpha)), np.sort(np.abs(right_beta)), atol=1e-4)
        crossed = keys[beta].decrypt(in_alpha[subject])
        assert abs(cosine(crossed, right_alpha)) < 0.05
        assert abs(cosine(keys[alpha].decrypt(in_beta[subject]), right_beta)) < 0.05
        assert np.linalg.norm(crossed) > 1e3  # not a template: noise of the size of the modulus

    with session_scope(db) as session:
        context = PublicContext.from_bytes(load_public_key_set(session, alpha))
    template = next(iter(in_alpha.values()))
    probe = encrypt_probe(context, np.random.default_rng(5).normal(size=peek_dim(template)))
    score = score_pair(context, probe, template)
    keyring = GalleryKeyring(key_folder / "galleries")
    right = keyring.get(alpha).decrypt_scores(score.ciphertext, score.source)
    assert abs(cosine(keys[beta].decrypt(score.ciphertext), right)) < 0.05
    with pytest.raises(InvalidCiphertext, match="another key set"):
        keyring.get(beta).decrypt_scores(score.ciphertext, score.source)
    with pytest.raises(KeyMismatch):
        keyring.get(beta).check_fingerprint(alpha)


def test_identify_in_a_gallery_with_its_own_keys_finds_the_right_person(
    stack, admin_headers, own_galleries, lfw_people
):
    for photos in lfw_people[:PEOPLE]:
        assert match_of_main_face(stack, admin_headers, photos[1], GALLERIES[0]) == photos[0].parent.name


def test_deleting_a_gallery_shreds_its_key(stack, admin_headers, own_galleries, db, key_folder, tmp_path):
    """A ciphertext copied out before the delete (a backup, a dump) is noise to every secret key
    the gateway still holds once the gallery is gone."""
    gallery, fingerprint = GALLERIES[1], own_galleries[GALLERIES[1]]
    copied = next(iter(templates_of(db, gallery).values()))
    key_file = key_folder / "galleries" / f"{fingerprint}.secret"
    right = RawSecretKey(key_file, tmp_path / "ct").decrypt(copied)

    r = requests.delete(f"{stack.url}/v1/galleries/{gallery}", headers=admin_headers, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"gallery": gallery, "deleted": True, "keys_destroyed": True}
    assert not key_file.exists()
    with session_scope(db) as session:
        parts = select(PublicKeySetPart.part).where(PublicKeySetPart.fingerprint == fingerprint)
        assert session.scalars(parts).all() == []
    left = [key_folder / "secret.ctx", *(key_folder / "galleries").glob("*.secret")]
    assert len(left) >= 2  # the deployment's and the other gallery's
    for path in left:
        assert abs(cosine(RawSecretKey(path, tmp_path / "ct").decrypt(copied), right)) < 0.05, path.name
    r = requests.get(f"{stack.url}/v1/galleries/{gallery}", headers=admin_headers, timeout=30)
    assert r.status_code == 404


def test_rotate_keys_rekeys_one_gallery_and_keeps_its_subjects(
    stack, admin_headers, own_galleries, mysql_redis_env, key_folder, lfw_people, db
):
    gallery, old = GALLERIES[0], own_galleries[GALLERIES[0]]
    done = veilface_cli(mysql_redis_env, "galleries", "rotate-keys", gallery, "--yes")
    rotation = json.loads(done.stdout)
    assert rotation["gallery"] == gallery and rotation["old_fingerprint"] == old
    new = rotation["new_fingerprint"]
    assert new != old
    assert (rotation["templates_dropped"], rotation["subjects_to_reenroll"]) == (PEOPLE, PEOPLE)
    assert not (key_folder / "galleries" / f"{old}.secret").exists()
    assert (key_folder / "galleries" / f"{new}.secret").is_file()
    body = requests.get(f"{stack.url}/v1/galleries/{gallery}", headers=admin_headers, timeout=30).json()
    assert body["key_fingerprint"] == new
    r = requests.get(f"{stack.url}/v1/galleries/{gallery}/subjects", headers=admin_headers, timeout=30)
    subjects = r.json()["subjects"]
    assert len(subjects) == PEOPLE and all(s["templates"] == 0 for s in subjects)
    assert templates_of(db, gallery) == {}
    # enrolled again, under the new key set: the workers follow without a restart
    for photos in lfw_people[:PEOPLE]:
        enroll_main_face(stack, admin_headers, photos[0], gallery)
    person = lfw_people[0]
    assert match_of_main_face(stack, admin_headers, person[1], gallery) == person[0].parent.name
