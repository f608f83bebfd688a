"""Hidden sentinels (issue 20): the keeper adds them, real CKKS scores pass the check, forged ones do not.

These tests build real things without a stack: a SQLite or MariaDB store, the session's key
set, the matcher's scoring engine and the gateway's decryption. tests/test_malicious_matcher.py
replays the attack against the running stack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
from sqlalchemy import MetaData, create_engine, inspect, select, text

from tests.support import MYSQL, MYSQL_DATABASE
from veilface import errors
from veilface.config import load_settings
from veilface.crypto.codec import Kind
from veilface.crypto.keyfiles import read_key
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.sealing import ImageBinding, PayloadSealer
from veilface.crypto.secret import SecretContext
from veilface.messaging.messages import FaceBox, Probe
from veilface.search import sentinels
from veilface.search.checks import ForgedAnswer, noise_tolerance
from veilface.search.delta import load_template, merge_groups, score_delta
from veilface.search.engine import MaskCache, prepare_probe
from veilface.search.results import ScoreResult
from veilface.store import galleries as store
from veilface.store.db import create_schema, session_factory, session_scope
from veilface.store.models import Base, Gallery, Subject, Template
from veilface.store.sentinels import SentinelKeeper, live_positions

DIM = 512
MODEL = "m1"


@pytest.fixture(scope="module")
def public(key_dir) -> PublicContext:
    return PublicContext.load(key_dir / "public.ctx")


@pytest.fixture(scope="module")
def secret(key_dir) -> SecretContext:
    return SecretContext.load(key_dir / "secret.ctx")


@pytest.fixture
def gallery_db(tmp_path, public):
    """A SQLite store with gallery 'lobby' holding one enrolled face at position 0."""
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    create_schema(engine)
    sessions = session_factory(engine)
    rng = np.random.default_rng(7)
    with session_scope(sessions) as session:
        gallery = store.get_or_create_gallery(session, "lobby")
        subject = store.get_or_create_subject(session, gallery, "ada")
        sequence = store.next_sequence(session, gallery.id, MODEL)
        session.add(
            Template(
                gallery_id=gallery.id,
                subject_id=subject.id,
                model_version=MODEL,
                image_sha256="a" * 64,
                block_no=0,
                slot=sequence,
                state="delta",
                ciphertext=encrypt_template(public, rng.standard_normal(DIM), sequence),
            )
        )
    yield sessions, gallery.id
    engine.dispose()


def keeper(key_dir, per_block: int) -> SentinelKeeper:
    return SentinelKeeper(read_key(key_dir / "sentinel.key"), per_block, key_dir / "public.ctx")


def delta_answer(public: PublicContext, secret: SecretContext, sessions, gallery_id: int, probe: np.ndarray):
    """What an honest matcher answers for the gallery's delta, decrypted as the gateway does."""
    with session_scope(sessions) as session:
        rows = session.execute(
            select(Template.slot, Template.ciphertext).where(Template.gallery_id == gallery_id)
        ).all()
    groups = merge_groups(public, DIM, [(slot, load_template(public, blob, DIM)) for slot, blob in rows])
    prepared = prepare_probe(public, encrypt_probe(public, probe), DIM)
    blob = public.dumps(score_delta(public, groups, prepared, MaskCache(public, DIM)), Kind.SCORE)
    result = ScoreResult(0, 0, "delta", DIM, tuple(sorted(slot for slot, _ in rows)), blob)
    return result, secret.decrypt_scores(blob, "delta")


def test_a_sentinel_vector_is_a_fixed_unit_vector_of_its_seed():
    first, again = sentinels.sentinel_vector(b"s" * 32, DIM), sentinels.sentinel_vector(b"s" * 32, DIM)
    other = sentinels.sentinel_vector(b"t" * 32, DIM)
    assert np.array_equal(first, again) and abs(np.linalg.norm(first) - 1) < 1e-12
    assert abs(first @ other) < 0.25  # two random directions in 512-D are nearly orthogonal


def test_the_keyed_coin_picks_about_the_configured_share_and_depends_on_the_key():
    draws = [sentinels.is_sentinel_slot(b"k" * 32, 1, MODEL, n, 1 / 16) for n in range(16_000)]
    others = [sentinels.is_sentinel_slot(b"j" * 32, 1, MODEL, n, 1 / 16) for n in range(16_000)]
    assert 850 < sum(draws) < 1150  # 1000 expected, 4.5 standard deviations either way
    assert draws != others
    assert not any(sentinels.is_sentinel_slot(b"k" * 32, 1, MODEL, n, 0.0) for n in range(1000))


def test_the_keeper_adds_subjectless_templates_that_never_rank(key_dir, gallery_db):
    sessions, gallery_id = gallery_db
    with session_scope(sessions) as session:
        assert keeper(key_dir, 0).top_up(session, gallery_id, MODEL) == 0
        assert keeper(key_dir, 8192).top_up(session, gallery_id, MODEL) == sentinels.MAX_RUN
    with session_scope(sessions) as session:
        refs = keeper(key_dir, 8192).roster(session, gallery_id, MODEL)
        rows = session.execute(select(Template.subject_id, Template.slot).order_by(Template.slot)).all()
        owners = store.slot_owners(session, gallery_id, MODEL)
        listed = store.list_galleries(session)
        positions = live_positions(session, gallery_id, MODEL)
    assert [(r.block_no, r.slot) for r in refs] == [(0, n) for n in range(1, 1 + sentinels.MAX_RUN)]
    assert len({r.seed for r in refs}) == len(refs)
    assert rows[0][0] is not None and all(subject is None for subject, _ in rows[1:])
    assert list(owners) == [(0, 0)] and listed[0]["templates"] == 1
    assert positions == {(r.block_no, r.slot) for r in refs}


def test_true_scores_pass_and_one_altered_sentinel_score_is_caught(key_dir, public, secret, gallery_db):
    sessions, gallery_id = gallery_db
    with session_scope(sessions) as session:
        keeper(key_dir, 8192).top_up(session, gallery_id, MODEL)
    with session_scope(sessions) as session:
        refs = keeper(key_dir, 8192).roster(session, gallery_id, MODEL)
    probe = np.random.default_rng(3).standard_normal(DIM)
    result, vector = delta_answer(public, secret, sessions, gallery_id, probe)
    (true,) = sentinels.true_scores([probe], [r.seed for r in refs])
    expected = {(r.block_no, r.slot): score for r, score in zip(refs, true, strict=True)}
    margins = {(0, "delta"): noise_tolerance(0)}
    sentinels.check_sentinels([(result, vector)], expected, margins, public.slots)

    lane, position = public.layout(DIM).locate(refs[3].slot)
    forged = vector.copy()
    forged[position] += 0.01 if lane == 0 else 0.01j  # within [-1, 1]: the range check passes
    with pytest.raises(ForgedAnswer, match="sentinel"):
        sentinels.check_sentinels([(result, forged)], expected, margins, public.slots)
    with pytest.raises(ForgedAnswer, match="sentinel"):  # a block left out scores zero, not its true score
        sentinels.check_sentinels([], expected, margins, public.slots)


def test_seeds_and_scores_open_only_for_their_task_and_probe(key_dir):
    sealer = PayloadSealer(read_key(key_dir / "queue.key"))
    task = ImageBinding("veilface.embed.probe", "b" * 64, 2_000_000_000)
    other = ImageBinding("veilface.embed.probe", "c" * 64, 2_000_000_000)
    sealed = sentinels.seal_seeds(sealer, task, [b"1" * 32, b"2" * 32])
    assert sentinels.open_seeds(sealer, task, sealed) == [b"1" * 32, b"2" * 32]
    assert sentinels.seal_seeds(sealer, task, []) == "" and sentinels.open_seeds(sealer, task, "") == []
    with pytest.raises(errors.MessageRefused):
        sentinels.open_seeds(sealer, other, sealed)

    refs = [sentinels.SentinelRef(0, 5, b"1" * 32), sentinels.SentinelRef(1, 2, b"2" * 32)]
    scores = sentinels.seal_scores(sealer, 1, "probe-ciphertext", [0.25, -0.5])
    assert sentinels.open_scores(sealer, 1, "probe-ciphertext", scores, refs) == {(0, 5): 0.25, (1, 2): -0.5}
    for index, ciphertext, sealed_scores in [
        (0, "probe-ciphertext", scores),
        (1, "another", scores),
        (1, "x", None),
    ]:
        with pytest.raises(errors.MessageRefused):
            sentinels.open_scores(sealer, index, ciphertext, sealed_scores, refs)
    with pytest.raises(errors.MessageRefused, match="do not fit"):
        sentinels.open_scores(sealer, 1, "probe-ciphertext", scores, refs[:1])
    face = FaceBox((0, 0, 1, 1), 0.9)
    probes = [Probe(face, MODEL, None, "blurry"), Probe(face, MODEL, "probe-ciphertext", None, scores)]
    assert sentinels.expected_per_probe(sealer, probes, refs) == [{}, {(0, 5): 0.25, (1, 2): -0.5}]
    with pytest.raises(errors.MessageRefused):  # a probe whose true scores went missing
        sentinels.expected_per_probe(sealer, [Probe(face, MODEL, "probe-ciphertext")], refs)


def test_the_odds_of_a_forgery_going_unnoticed():
    assert sentinels.undetected_probability(100, 10, 1) == pytest.approx(0.9)
    assert sentinels.undetected_probability(100, 10, 10) == pytest.approx(0.3305, abs=1e-4)
    assert sentinels.undetected_probability(20, 10, 11) == 0.0


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_a_database_from_before_sentinels_lets_templates_lose_their_subject(backend, tmp_path):
    """The migration makes ``templates.subject_id`` nullable and keeps the rows; a second run
    changes nothing."""
    name = f"{MYSQL_DATABASE}_sentinels"
    url = MYSQL.create_database(name) if backend == "mariadb" else f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    if backend == "mariadb":
        create_schema(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE sentinels")
            conn.exec_driver_sql("ALTER TABLE templates MODIFY subject_id BIGINT NOT NULL")
    else:
        old = MetaData()
        for table in Base.metadata.sorted_tables:
            if table.name != "sentinels":
                table.to_metadata(old)
        old.tables["templates"].c.subject_id.nullable = False
        old.create_all(engine)
    sessions = session_factory(engine)
    with session_scope(sessions) as session:
        session.add(Gallery(name="old"))
        session.flush()
        session.add(Subject(gallery_id=1, name="ada"))
        session.flush()
        session.add(
            Template(
                gallery_id=1, subject_id=1, model_version=MODEL, image_sha256="d" * 64, block_no=0, slot=0
            )
        )
    assert not _subject_nullable(engine)
    create_schema(engine)
    create_schema(engine)
    assert _subject_nullable(engine)
    with session_scope(sessions) as session:
        assert session.execute(select(Template.subject_id, Template.slot)).all() == [(1, 0)]
        session.add(
            Template(
                gallery_id=1, subject_id=None, model_version=MODEL, image_sha256="e" * 64, block_no=0, slot=1
            )
        )
    assert {"ix_templates_state"} <= {index["name"] for index in inspect(engine).get_indexes("templates")}
    engine.dispose()
    if backend == "mariadb":
        MYSQL.drop_database(name)


def _subject_nullable(engine) -> bool:
    columns = inspect(engine).get_columns("templates")
    return next(column["nullable"] for column in columns if column["name"] == "subject_id")


@pytest.mark.stack
def test_the_gateway_adds_sentinels_where_its_key_says_as_a_gallery_grows(
    stack, mysql_redis_env, admin_headers, key_dir, lfw_people
):
    """On the session stack (default share, 1 slot in 16): after each enrollment every position
    the keyed coin picks holds a sentinel (position 0 excepted: the gallery's dimension is not
    known before its first face), and no other does; identify still answers."""
    key, rate = read_key(key_dir / "sentinel.key"), load_settings(mysql_redis_env).sentinels_per_block / 8192
    engine = create_engine(mysql_redis_env["VEILFACE_DATABASE_URL"])
    people = iter(lfw_people[60:])

    def enroll(gallery: str) -> list[Path]:
        photos = next(people)
        url = f"{stack.url}/v1/galleries/{gallery}/subjects/{photos[0].parent.name}/faces?face=main"
        r = requests.post(url, headers=admin_headers, files=[("image", photos[0].read_bytes())], timeout=120)
        assert r.status_code == 201, r.text
        return photos

    for attempt in range(4):  # a gallery whose first sentinel comes early enough
        gallery = f"sentinel-placement-{attempt}"
        photos = enroll(gallery)
        with engine.connect() as conn:
            gallery_id, model = conn.execute(
                text(
                    "SELECT DISTINCT g.id, t.model_version FROM galleries g"
                    " JOIN templates t ON t.gallery_id = g.id WHERE g.name = :g"
                ),
                {"g": gallery},
            ).one()
        coin = [sentinels.is_sentinel_slot(key, gallery_id, model, n, rate) for n in range(64)]
        if any(coin[1:24]):
            break
    else:
        pytest.fail("no gallery drew a sentinel among its first 24 positions (odds below 1e-2)")
    first = coin.index(True, 1)
    while True:
        with engine.connect() as conn:
            counter = conn.execute(
                text("SELECT next_slot FROM slot_counters WHERE gallery_id = :g"), {"g": gallery_id}
            ).scalar_one()
            placed = [
                slot
                for (slot,) in conn.execute(
                    text(
                        "SELECT t.slot FROM templates t JOIN sentinels s ON s.template_id = t.id"
                        " WHERE t.gallery_id = :g ORDER BY t.slot"
                    ),
                    {"g": gallery_id},
                )
            ]
        if counter > first:
            break
        photos = enroll(gallery)
    engine.dispose()
    assert placed == [n for n in range(1, counter) if coin[n]] and first in placed
    r = requests.post(
        f"{stack.url}/v1/galleries/{gallery}/identify",
        headers=admin_headers,
        files=[("image", photos[1].read_bytes())],
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["match"] == photos[0].parent.name
