"""Galleries with keys of their own, the storage side: their public key sets in parts, fingerprint-
checked, on SQLite and MariaDB (within its packet limit); the gateway's keyring of their secret keys;
the migration adding the key columns to ``galleries``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select, update

from tests.support import MYSQL, MYSQL_DATABASE, database_from_before
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import GalleryKeyring
from veilface.errors import InvalidCiphertext, KeyMismatch
from veilface.search.pair import score_pair
from veilface.store.db import GALLERY_KEY_COLUMNS, create_schema, session_factory, session_scope
from veilface.store.keysets import (
    PART_BYTES,
    PublicContexts,
    delete_public_key_set,
    load_public_key_set,
    save_public_key_set,
)
from veilface.store.models import Gallery, PublicKeySetPart


@pytest.fixture(scope="module")
def keyring(tmp_path_factory) -> GalleryKeyring:
    return GalleryKeyring(tmp_path_factory.mktemp("keys") / "galleries")


@pytest.fixture(scope="module")
def own_key_set(keyring: GalleryKeyring) -> tuple[str, bytes]:
    """One gallery key set (generating one takes seconds): fingerprint and public context."""
    return keyring.create()


@pytest.fixture(params=["sqlite", "mariadb"])
def sessions(request, tmp_path: Path):
    name = f"{MYSQL_DATABASE}_gkeys"
    url = MYSQL.create_database(name) if request.param == "mariadb" else f"sqlite:///{tmp_path / 'k.db'}"
    engine = create_engine(url)
    create_schema(engine)
    yield session_factory(engine)
    engine.dispose()
    if request.param == "mariadb":
        MYSQL.drop_database(name)


def test_a_public_key_set_is_stored_in_parts_and_read_back_whole(sessions, own_key_set):
    """A real public key set (Galois keys included) is over 12 MB: it goes in parts of at most
    ``PART_BYTES`` (MariaDB's default packet limit is 16 MiB) and comes back byte for byte."""
    fingerprint, blob = own_key_set
    assert len(blob) > 3 * PART_BYTES
    with session_scope(sessions) as session:
        assert save_public_key_set(session, blob) == fingerprint
        assert save_public_key_set(session, blob) == fingerprint  # idempotent
    with session_scope(sessions) as session:
        sizes = session.scalars(
            select(func.length(PublicKeySetPart.data)).order_by(PublicKeySetPart.part)
        ).all()
        assert len(sizes) == -(-len(blob) // PART_BYTES) and max(sizes) <= PART_BYTES
        assert load_public_key_set(session, fingerprint) == blob
    context = PublicContexts(sessions).get(fingerprint)
    assert context.fingerprint == fingerprint
    with session_scope(sessions) as session:
        assert delete_public_key_set(session, fingerprint) == len(sizes)
        with pytest.raises(KeyMismatch, match="no public key set"):
            load_public_key_set(session, fingerprint)


def test_an_altered_or_missing_part_is_refused(sessions, own_key_set):
    fingerprint, blob = own_key_set
    with session_scope(sessions) as session:
        save_public_key_set(session, blob)
        first = (PublicKeySetPart.fingerprint == fingerprint) & (PublicKeySetPart.part == 0)
        session.execute(update(PublicKeySetPart).where(first).values(data=b"x" + blob[1:PART_BYTES]))
    with session_scope(sessions) as session, pytest.raises(KeyMismatch, match="does not match"):
        load_public_key_set(session, fingerprint)
    with session_scope(sessions) as session:
        session.execute(PublicKeySetPart.__table__.delete().where(first))
    with pytest.raises(KeyMismatch, match="does not match"):
        PublicContexts(sessions).get(fingerprint)


def test_the_public_context_cache_keeps_the_most_recent(sessions, own_key_set):
    fingerprint, blob = own_key_set
    with session_scope(sessions) as session:
        save_public_key_set(session, blob)
    contexts = PublicContexts(sessions, size=1)
    first = contexts.get(fingerprint)
    assert contexts.get(fingerprint) is first  # loaded once
    with pytest.raises(KeyMismatch):
        contexts.get("0" * 64)
    assert contexts.get(fingerprint) is first


def test_the_keyring_writes_owner_only_files_and_forgets_a_destroyed_key(keyring):
    fingerprint, blob = keyring.create()
    path = keyring.path(fingerprint)
    assert path == keyring.folder / f"{fingerprint}.secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys = keyring.get(fingerprint)
    assert keys.fingerprint == fingerprint and keyring.get(fingerprint) is keys
    PublicContext.from_bytes(blob)  # the public half holds no secret key
    # another process unlinks the file: this one's cached key stops working too
    path.unlink()
    with pytest.raises(KeyMismatch, match="not held here"):
        keyring.get(fingerprint)
    assert keyring.destroy(fingerprint) is False


def test_the_keyring_names_files_by_fingerprint_only(keyring):
    for bad in ("../secret", "A" * 64, "0" * 63, "0" * 64 + "/x"):
        with pytest.raises(ValueError):
            keyring.path(bad)


def test_a_score_of_one_key_set_is_refused_by_another_ones_secret_key(keyring, own_key_set):
    """The normal path checks the key set before the secret key touches a ciphertext: a pair score
    under one gallery's key decrypts with its own key only, and another's refuses it."""
    fingerprint, blob = own_key_set
    other, _ = keyring.create()
    context = PublicContext.from_bytes(blob)
    vector = np.random.default_rng(3).normal(size=128)
    score = score_pair(context, encrypt_probe(context, vector), encrypt_template(context, vector, 0))
    lanes = keyring.get(fingerprint).decrypt_scores(score.ciphertext, score.source)
    assert abs(lanes[0].real - 1.0) < 1e-3  # a vector's cosine with itself
    with pytest.raises(InvalidCiphertext, match="another key set"):
        keyring.get(other).decrypt_scores(score.ciphertext, score.source)
    with pytest.raises(KeyMismatch):
        keyring.get(other).check_fingerprint(fingerprint)
    assert keyring.destroy(other) is True and not keyring.path(other).exists()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_galleries_of_a_database_from_before_gallery_keys_gain_the_key_columns(backend, tmp_path):
    """A gallery made before per-gallery keys is under the deployment's key set after the migration."""
    with database_from_before(backend, tmp_path, "gkcols", "galleries", GALLERY_KEY_COLUMNS) as engine:
        create_schema(engine)
        create_schema(engine)
        with session_scope(session_factory(engine)) as session:
            gallery = session.scalar(select(Gallery))
            assert (gallery.key_mode, gallery.key_fingerprint) == ("deployment", None)
