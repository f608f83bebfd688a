"""The packed engine end to end: blocks, delta, compaction, shard, repository and ranking."""

from __future__ import annotations

import MySQLdb
import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import delete, insert, select, update

from tests.support import MYSQL
from veilface.cli import main
from veilface.config import load_settings
from veilface.crypto.codec import Kind
from veilface.crypto.layout import BlockLayout
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import SecretContext, generate_keyset
from veilface.errors import InvalidCiphertext
from veilface.search import compaction, ranking
from veilface.search.checks import check_scores, noise_tolerance
from veilface.search.compaction import compact_block, relayout, repack_gallery
from veilface.search.delta import fold
from veilface.search.engine import prepare_probe, score_block
from veilface.search.layout import baby_steps_for
from veilface.search.packer import import_block, pack_block
from veilface.search.repository import BABY_GIANT_LAYOUT, SINGLE_STEP_LAYOUT, write_block
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
def key_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys")
    generate_keyset(path)
    return path


@pytest.fixture(scope="module")
def keys(key_dir):
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
        return MYSQL.create_database(MYSQL_DB)
    except MySQLdb.OperationalError:
        pytest.skip(f"MariaDB is not reachable at {MYSQL.host}:{MYSQL.port}")


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


def decrypt(secret, results, allocated: dict[int, int] | None = ALLOCATED):
    """Decrypt as the gateway does, each result passing the gateway's checks on genuine scores
    (``allocated``: slots ever allocated per block; ``None`` where a test writes its rows without
    the slot counter, and checks the scores against plaintext only)."""
    decrypted = []
    for result in results:
        vector = secret.decrypt_scores(result.ciphertext, result.source)
        if allocated is not None:
            if result.source == "block":
                allowed = np.arange(allocated[result.block_no])
                tolerance = noise_tolerance(result.block_version)
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
        import_block(ctx, session, gallery_id, model, 0, templates[packed])
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
    assert compact_block(ctx, factory, gallery_id, model, 0, DIM) == DELTA - 1
    assert compact_block(ctx, factory, gallery_id, model, 1, DIM) == DELTA_NEXT
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


def block_scores(ctx, secret, diagonals, baby_steps, probe, count):
    """Decrypted scores of slots ``0 .. count-1`` of one block laid out with ``baby_steps``."""
    dim = probe.shape[0]
    prepared = prepare_probe(ctx, encrypt_probe(ctx, probe), dim, baby_steps)
    scores = score_block(ctx, diagonals, baby_steps, prepared)
    assert scores.size() == 3 and list(scores.parms_id()) == list(ctx.score_level)
    return ctx.layout(dim).slot_scores(
        secret.decrypt_scores(ctx.dumps(scores, Kind.SCORE), "block"), np.arange(count)
    )


@pytest.mark.parametrize(
    "dim", [128, pytest.param(512, marks=pytest.mark.slow), pytest.param(1024, marks=pytest.mark.slow)]
)
def test_baby_step_giant_step_scores_match_plaintext(keys, dim):
    ctx, secret = keys
    rng = np.random.default_rng(dim)
    templates = rng.standard_normal((300, dim))
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    probe = templates[11] + 0.5 * rng.standard_normal(dim) / np.sqrt(dim)
    probe /= np.linalg.norm(probe)
    expected = templates @ probe
    scale = None
    for baby_steps in sorted({1, 32, baby_steps_for(dim, 1), dim}):
        blobs = pack_block(ctx, templates, baby_steps)
        diagonals = [ctx.loads(blob, Kind.DIAGONAL, level=ctx.packed_level) for blob in blobs]
        got = block_scores(ctx, secret, diagonals, baby_steps, probe, len(templates))
        assert np.max(np.abs(got - expected)) < TOLERANCE, baby_steps
        assert np.argmax(got) == np.argmax(expected)
        # The gateway sees the same score ciphertext for every layout: same level, size, scale.
        prepared = prepare_probe(ctx, encrypt_probe(ctx, probe), dim, baby_steps)
        block_scale = score_block(ctx, diagonals, baby_steps, prepared).scale
        assert scale is None or block_scale == scale
        scale = block_scale
    # Re-laying out encrypted diagonals (single step -> planned) gives the same scores.
    single = [
        ctx.loads(blob, Kind.DIAGONAL, level=ctx.packed_level) for blob in pack_block(ctx, templates, dim)
    ]
    planned = baby_steps_for(dim, 1)
    moved = relayout(ctx, single, dim, planned)
    assert np.max(np.abs(block_scores(ctx, secret, moved, planned, probe, 300) - expected)) < TOLERANCE


def test_probe_needs_the_baby_steps_of_the_block(keys):
    ctx, _ = keys
    templates = np.eye(DIM)[:4]
    diagonals = [ctx.loads(b, Kind.DIAGONAL, level=ctx.packed_level) for b in pack_block(ctx, templates, 32)]
    prepared = prepare_probe(ctx, encrypt_probe(ctx, templates[0]), DIM, 16)
    with pytest.raises(ValueError):
        score_block(ctx, diagonals, 32, prepared)
    with pytest.raises(ValueError):
        pack_block(ctx, templates, 48)


def test_old_layout_blocks_are_searched_then_repacked_with_identical_decisions(keys, key_dir, data, tmp_path):
    """A gallery written before layouts were versioned (single-step blocks 0 and 1, a delta
    template in block 0) is searched as it was, next to a block in the new layout; compaction
    (block 0) and repacking (block 1) move it to the new layout with identical decisions."""
    ctx, secret = keys
    templates, probe = data
    capacity = ctx.params.block_capacity
    engine = make_engine(load_settings(var_dir=tmp_path))
    create_schema(engine)
    factory = session_factory(engine)
    model = "old"
    with session_scope(factory) as session:
        gallery = Gallery(name="legacy")
        session.add(gallery)
        session.flush()
        subject = Subject(gallery_id=gallery.id, name="s")
        session.add(subject)
        session.flush()
        gallery_id, subject_id = gallery.id, subject.id
    members = {0: range(0, 100), 1: range(100, 180), 2: range(180, PACKED)}
    delta = PACKED  # enrolled into block 0, slot 100, before the upgrade
    with session_scope(factory) as session:
        for block_no in (0, 1):  # as an older release wrote them: no layout recorded
            chosen = templates[list(members[block_no])]
            write_block(
                session, gallery_id, model, block_no, DIM, pack_block(ctx, chosen, DIM), len(chosen), DIM
            )
        session.execute(update(Block).values(layout_version=SINGLE_STEP_LAYOUT, baby_steps=None))
        import_block(ctx, session, gallery_id, model, 2, templates[list(members[2])])
        rows = [{"gallery_id": gallery_id, "subject_id": subject_id, "model_version": model,
                 "image_sha256": f"{n:064x}", "block_no": b, "slot": k, "state": "packed"}
                for b, ns in members.items() for k, n in enumerate(ns)]  # fmt: skip
        rows.append(
            {"gallery_id": gallery_id, "subject_id": subject_id, "model_version": model,
             "image_sha256": f"{delta:064x}", "block_no": 0, "slot": 100, "state": "delta",
             "ciphertext": encrypt_template(ctx, templates[delta], 100)}
        )  # fmt: skip
        session.execute(insert(Template), rows)
    where = {n: (b, k) for b, ns in members.items() for k, n in enumerate(ns)} | {delta: (0, 100)}
    vectors = np.zeros((2 * capacity + len(members[2]), DIM))
    for n, (b, k) in where.items():
        vectors[b * capacity + k] = templates[n]
    live = {(b, k): b * capacity + k for b, k in where.values()}

    def search():
        shard = Shard(ctx, gallery_id, model, DIM)
        with session_scope(factory) as session:
            shard.refresh(session)
        decrypted = decrypt(secret, shard.search(encrypt_probe(ctx, probe)), allocated=None)
        assert check_plain_scores(ctx, decrypted, vectors, probe, capacity) == set(live.values())
        layouts = {n: (b.ref.layout_version, b.ref.baby_steps) for n, b in shard.blocks.items()}
        scores = {
            (r.block_no, slot): score
            for r, vector in decrypted
            for slot, score in zip(
                r.slots, ctx.layout(DIM).slot_scores(vector, np.asarray(r.slots)), strict=True
            )
        }
        return layouts, scores, [t for t, _ in ranking.top_k(decrypted, live, 10, ctx.slots)]

    layouts, before, top_before = search()
    assert layouts == {0: (SINGLE_STEP_LAYOUT, DIM), 1: (SINGLE_STEP_LAYOUT, DIM),
                       2: (BABY_GIANT_LAYOUT, baby_steps_for(DIM, 3))}  # fmt: skip
    assert top_before == sorted(live.values(), key=lambda n: -vectors[n] @ probe)[:10]

    assert compact_block(ctx, factory, gallery_id, model, 0, DIM) == 1
    # The matcher's compaction leaves single-step blocks to the command (their re-layout is long).
    assert repack_gallery(ctx, factory, gallery_id, single_step=False) == (0, 3)
    env = {"VEILFACE_VAR_DIR": str(tmp_path), "VEILFACE_KEY_DIR": str(key_dir), "VEILFACE_DATABASE_URL": ""}
    for repacked in (1, 0):  # block 1 (block 0 was compacted, block 2 is new); then nothing
        result = CliRunner().invoke(main, ["galleries", "repack", "legacy"], env=env)
        assert result.exit_code == 0, result.output
        assert result.output == f"legacy: {repacked} of 3 blocks repacked\n"
    layouts, after, top_after = search()
    assert layouts == {n: (BABY_GIANT_LAYOUT, baby_steps_for(DIM, 3)) for n in (0, 1, 2)}
    assert top_after == top_before
    assert after.keys() == before.keys()
    assert max(abs(after[k] - before[k]) for k in before) < TOLERANCE
    engine.dispose()


def test_growing_gallery_raises_the_baby_steps_of_its_older_blocks(keys, data, tmp_path):
    """Block 0 is written for a one-block gallery; once the gallery has three blocks the plan
    asks for more baby steps, and repacking moves block 0 there with the same scores."""
    ctx, secret = keys
    templates, probe = data
    factory = session_factory(make_engine(load_settings(var_dir=tmp_path)))
    create_schema(factory.kw["bind"])
    with session_scope(factory) as session:
        gallery = Gallery(name="growing")
        session.add(gallery)
        session.flush()
        subject = Subject(gallery_id=gallery.id, name="s")
        session.add(subject)
        session.flush()
        gallery_id, subject_id = gallery.id, subject.id
        import_block(ctx, session, gallery_id, "m", 0, templates[:50])
        session.execute(
            insert(Template),
            [{"gallery_id": gallery_id, "subject_id": subject_id, "model_version": "m",
              "image_sha256": f"{n:064x}", "block_no": 0, "slot": n, "state": "packed"} for n in range(50)],
        )  # fmt: skip
    assert baby_steps_for(DIM, 1) == baby_steps_for(DIM, 2) < baby_steps_for(DIM, 3)
    with session_scope(factory) as session:
        for block_no in (1, 2):  # each written for the gallery it ends: blocks 0 and 1 lag behind
            import_block(ctx, session, gallery_id, "m", block_no, templates[50:60])
    # One block per call (as the matcher's compaction does it), then nothing left to do.
    assert [repack_gallery(ctx, factory, gallery_id, limit=1) for _ in range(3)] == [(1, 3), (1, 3), (0, 3)]
    shard = Shard(ctx, gallery_id, "m", DIM)
    with session_scope(factory) as session:
        shard.refresh(session)
    assert {block.ref.baby_steps for block in shard.blocks.values()} == {baby_steps_for(DIM, 3)}
    capacity = ctx.params.block_capacity
    vectors = np.zeros((capacity, DIM))
    vectors[:50] = templates[:50]
    decrypted = decrypt(secret, [r for r in shard.search(encrypt_probe(ctx, probe)) if r.block_no == 0], None)
    assert check_plain_scores(ctx, decrypted, vectors, probe, capacity) == set(range(50))


def test_compaction_lets_enrollment_go_on_and_never_folds_a_template_deleted_meanwhile(
    keys, data, factory, monkeypatch
):
    """While a block is folded (seconds at 1024-D) a new template is enrolled into it and a delta
    template deleted: neither waits for the compaction, which sees the change, folds again
    and folds exactly the live templates."""
    ctx, secret = keys
    templates, probe = data
    with session_scope(factory) as session:
        gallery = Gallery(name="busy")
        session.add(gallery)
        session.flush()
        subject = Subject(gallery_id=gallery.id, name="s")
        session.add(subject)
        session.flush()
        gallery_id, subject_id = gallery.id, subject.id

    def rows(slots):
        return [{"gallery_id": gallery_id, "subject_id": subject_id, "model_version": "m",
                 "image_sha256": f"{n:064x}", "block_no": 0, "slot": n, "state": "delta",
                 "ciphertext": encrypt_template(ctx, templates[n], n)} for n in slots]  # fmt: skip

    with session_scope(factory) as session:
        session.execute(insert(Template), rows(range(10)))
    folds = []

    def fold_while_others_write(*args):
        if not folds:  # the first fold: another transaction enrolls slot 10 and deletes slot 3
            with session_scope(factory) as other:
                other.execute(insert(Template), rows([10]))
                other.execute(delete(Template).where(Template.slot == 3))
        folds.append(args)
        return fold(*args)

    monkeypatch.setattr(compaction, "fold", fold_while_others_write)
    assert compact_block(ctx, factory, gallery_id, "m", 0, DIM) == 10
    assert len(folds) == 2
    with session_scope(factory) as session:
        states = dict(session.execute(select(Template.slot, Template.state)).all())
    assert states == {n: "packed" for n in range(11) if n != 3}
    shard = Shard(ctx, gallery_id, "m", DIM)
    with session_scope(factory) as session:
        shard.refresh(session)
    vectors = np.zeros((ctx.params.block_capacity, DIM))
    vectors[:11] = templates[:11]
    decrypted = decrypt(secret, shard.search(encrypt_probe(ctx, probe)), allocated=None)
    assert check_plain_scores(ctx, decrypted, vectors, probe, ctx.params.block_capacity) == set(range(11)) - {
        3
    }
