"""The packed engine end to end: blocks, delta, compaction, shard, repository and ranking."""

from __future__ import annotations

import MySQLdb
import numpy as np
import pytest
from sqlalchemy import delete, insert, select

from veilface.config import load_settings
from veilface.crypto.layout import BlockLayout
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import SecretContext, generate_keyset
from veilface.errors import InvalidCiphertext
from veilface.search import ranking
from veilface.search.checks import check_scores, noise_tolerance
from veilface.search.compaction import compact_block
from veilface.search.packer import pack_block
from veilface.search.repository import write_block
from veilface.search.shard import Shard
from veilface.store.db import create_schema, make_engine, session_factory, session_scope
from veilface.store.models import Block, Gallery, Subject, Template

DIM = 128
PACKED = 200  # slots 0..199 of block 0 packed by the batch packer
DELTA = 40  # slots 200..239 of block 0 enrolled one by one, plus DELTA_NEXT in block 1
DELTA_NEXT = 5
TOLERANCE = 1e-4
MYSQL_DB = "veilface_test_search"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("keys")
    generate_keyset(key_dir)
    return PublicContext.load(key_dir / "public.ctx"), SecretContext.load(key_dir / "secret.ctx")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    templates = rng.standard_normal((PACKED + DELTA + DELTA_NEXT, DIM))
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    probe = templates[17] + 0.3 * rng.standard_normal(DIM) / np.sqrt(DIM)
    return templates, probe / np.linalg.norm(probe)


def mysql_url() -> str:
    try:
        conn = MySQLdb.connect(host="127.0.0.1", user="root", passwd="")
    except MySQLdb.OperationalError:
        pytest.skip("MariaDB is not reachable at 127.0.0.1:3306")
    try:
        cur = conn.cursor()
        cur.execute(f"DROP DATABASE IF EXISTS `{MYSQL_DB}`")
        cur.execute(f"CREATE DATABASE `{MYSQL_DB}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        conn.close()
    return f"mysql+mysqldb://root@127.0.0.1:3306/{MYSQL_DB}?charset=utf8mb4"


@pytest.fixture(params=["sqlite", "mariadb"])
def factory(request, tmp_path):
    url = mysql_url() if request.param == "mariadb" else ""
    engine = make_engine(load_settings(var_dir=tmp_path, database_url=url))
    create_schema(engine)
    yield session_factory(engine)
    engine.dispose()


def slot_position(n: int, capacity: int) -> tuple[int, int]:
    return n // capacity, n % capacity


#: Slots ever allocated per block in the engine test (what the gateway reads from the slot counter).
ALLOCATED = {0: PACKED + DELTA, 1: DELTA_NEXT}


def decrypt(secret, results):
    """Decrypt as the gateway does, each result passing the gateway's checks on genuine scores."""
    decrypted = []
    for result in results:
        vector = secret.decrypt_scores(result.ciphertext, result.source)
        if result.source == "block":
            allowed, tolerance = np.arange(ALLOCATED[result.block_no]), noise_tolerance(result.block_version)
        else:
            allowed, tolerance = np.asarray(result.slots), noise_tolerance(0)
        check_scores(BlockLayout(secret.slots, result.dim), vector, allowed, tolerance, result.source)
        decrypted.append((result, vector))
    return decrypted


def check_plain_scores(ctx, decrypted, templates, probe, capacity):
    expected = templates @ probe
    seen = set()
    for result, vector in decrypted:
        got = ctx.layout(result.dim).slot_scores(vector, np.asarray(result.slots))
        indices = [result.block_no * capacity + slot for slot in result.slots]
        assert np.max(np.abs(got - expected[indices])) < TOLERANCE
        assert not seen & set(indices), "a slot is covered twice"
        seen |= set(indices)
    return seen


def test_engine_matches_plaintext_through_the_database(keys, data, factory):
    ctx, secret = keys
    templates, probe = data
    capacity = ctx.params.block_capacity
    model = "m1"
    with session_scope(factory) as session:
        gallery = Gallery(name="g")
        session.add(gallery)
        session.flush()
        subject = Subject(gallery_id=gallery.id, name="s")
        session.add(subject)
        session.flush()
        gallery_id, subject_id = gallery.id, subject.id

    def rows(indices, state, blobs=None):
        return [
            {"gallery_id": gallery_id, "subject_id": subject_id, "model_version": model,
             "image_sha256": f"{n:064x}", "block_no": n // capacity, "slot": n % capacity, "state": state,
             "ciphertext": None if blobs is None else blobs[k]}
            for k, n in enumerate(indices)
        ]  # fmt: skip

    packed = list(range(PACKED))
    with session_scope(factory) as session:
        write_block(session, gallery_id, model, 0, DIM, pack_block(ctx, templates[packed]), len(packed))
        session.execute(insert(Template), rows(packed, "packed"))
    # Delta templates: most of them in block 0, a few at the start of block 1.
    delta = list(range(PACKED, PACKED + DELTA)) + [capacity + k for k in range(DELTA_NEXT)]
    vectors = dict(zip(delta, templates[PACKED:], strict=True))
    blobs = [encrypt_template(ctx, vectors[n], n % capacity) for n in delta]
    with session_scope(factory) as session:
        session.execute(insert(Template), rows(delta, "delta", blobs))
    gallery_vectors = np.zeros((capacity + DELTA_NEXT, DIM))
    gallery_vectors[packed] = templates[packed]
    for n, vector in vectors.items():
        gallery_vectors[n] = vector

    shard = Shard(ctx, gallery_id, model, DIM)
    with session_scope(factory) as session:
        shard.refresh(session)
    results = shard.search(encrypt_probe(ctx, probe))
    assert [(r.block_no, r.source) for r in results] == [(0, "block"), (0, "delta"), (1, "delta")]
    covered = check_plain_scores(ctx, decrypt(secret, results), gallery_vectors, probe, capacity)
    assert covered == set(packed) | set(delta)

    # Ranking: the tombstoned best match and empty slots never rank.
    live = {slot_position(n, capacity): n for n in covered}
    decrypted = decrypt(secret, results)
    best = ranking.top_k(decrypted, live, 5, ctx.slots)
    expected_order = sorted(covered, key=lambda n: -gallery_vectors[n] @ probe)
    assert [t for t, _ in best] == expected_order[:5]
    del live[slot_position(expected_order[0], capacity)]
    assert [t for t, _ in ranking.top_k(decrypted, live, 5, ctx.slots)] == expected_order[1:6]

    # Delete one delta template, then compact: it is not folded, the rest are.
    deleted = PACKED + 3
    with session_scope(factory) as session:
        session.execute(delete(Template).where(Template.slot == deleted, Template.block_no == 0))
    with session_scope(factory) as session:
        assert compact_block(ctx, session, gallery_id, model, 0, DIM) == DELTA - 1
        assert compact_block(ctx, session, gallery_id, model, 1, DIM) == DELTA_NEXT
    with session_scope(factory) as session:
        versions = dict(session.execute(select(Block.block_no, Block.version)).all())
        states = session.execute(select(Template.state, Template.ciphertext)).all()
    assert versions == {0: 2, 1: 1}
    assert all(ciphertext is None for _, ciphertext in states)
    assert sorted(state for state, _ in states).count("packed") == PACKED + DELTA - 1 + DELTA_NEXT

    with session_scope(factory) as session:
        shard.refresh(session)
    assert not shard.delta
    results = shard.search(encrypt_probe(ctx, probe))
    assert [(r.block_no, r.block_version, r.source) for r in results] == [(0, 2, "block"), (1, 1, "block")]
    covered = check_plain_scores(ctx, decrypt(secret, results), gallery_vectors, probe, capacity)
    assert covered == (set(packed) | set(delta)) - {deleted}


def test_probe_of_wrong_dimension_or_garbage_rejected(keys):
    ctx, _ = keys
    shard = Shard(ctx, 1, "m", DIM)
    with pytest.raises(InvalidCiphertext):
        shard.search(encrypt_probe(ctx, np.ones(2 * DIM)))
    with pytest.raises(InvalidCiphertext):
        shard.search(b"\x00" * 1000)


def test_shards_split_blocks(keys):
    ctx, _ = keys
    shards = [Shard(ctx, 1, "m", DIM, blocks={i, i + 2}) for i in range(2)]
    assert [[s.owns(n) for n in range(4)] for s in shards] == [
        [True, False, True, False],
        [False, True, False, True],
    ]
    assert Shard(ctx, 1, "m", DIM).owns(12345)
