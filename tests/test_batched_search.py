"""One batched search for all faces of an image (issue 20).

In process: the search message carries 1 to ``max_faces_per_request`` probes, validated and
covered by the task signature; a matcher's shard scores a batch exactly as it scores each
probe alone; the gateway's checks refuse a batched answer whose parts are not one per probe,
in the order sent. On the real stack (``stack``): the faces of a mosaic reach the matcher in
one search message, and the lies a batch allows (``tests/lying_matcher.py``: a dropped, a
repeated and two swapped probe answers) are refused like every other lie of
``tests/test_malicious_matcher.py``.
"""

from __future__ import annotations

import re
import uuid

import numpy as np
import pytest
import requests
from sqlalchemy import insert

from tests.support import MYSQL_HOST, mosaic
from tests.test_malicious_matcher import GALLERY, Attacked, assert_refused, identify, state
from tests.test_malicious_matcher import attacked as attacked  # the lying matcher's stack
from veilface import errors
from veilface.api.compreface.ids import image_id_for
from veilface.config import load_settings
from veilface.crypto.layout import BlockLayout
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.secret import SecretContext, generate_keyset
from veilface.messaging.messages import (
    TASK_SEARCH,
    SearchAnswer,
    SearchRequest,
    probe_digest,
)
from veilface.messaging.signing import TaskSigner
from veilface.search import checks
from veilface.search.checks import ForgedAnswer, ShardPlan
from veilface.search.packer import import_block
from veilface.search.shard import Shard
from veilface.store.apikeys import create_api_key
from veilface.store.db import create_schema, make_engine, session_factory, session_scope
from veilface.store.models import Gallery, Subject, Template

DIM = 128
PACKED = 20
DELTA = 5
PROBES = ["AAAA", "BBBB", "CCCC"]
REQUEST = {"gallery_id": 3, "model_version": "v1", "probes": PROBES, "blocks": [0, 2]}
DIGESTS = tuple(probe_digest(p.encode()) for p in PROBES)
PLAN = ShardPlan("matcher1@host", DIM, frozenset({0}), DIGESTS)


# -- the messages ------------------------------------------------------------------------------


def test_a_search_request_round_trips_with_its_probes_in_order():
    request = SearchRequest.from_message(REQUEST, max_probes=3)
    assert request == SearchRequest(3, "v1", PROBES, [0, 2])
    assert SearchRequest.from_message(request.to_message()) == request


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({**REQUEST, "probes": []}, "without a probe"),
        ({**REQUEST, "probes": ["AAAA"] * 4}, "more than 3 probes"),
        ({**REQUEST, "probes": "AAAA"}, "malformed"),
        ({**REQUEST, "probes": ["AAAA", 7]}, "malformed"),
        ({**REQUEST, "gallery_id": True}, "malformed"),
        ({**REQUEST, "blocks": [0, "1"]}, "malformed"),
        ({**REQUEST, "probe": "AAAA"}, "malformed"),
        ({k: v for k, v in REQUEST.items() if k != "probes"}, "malformed"),
        (["AAAA"], "malformed"),
    ],
    ids=[
        "empty",
        "over the bound",
        "a string",
        "a number",
        "bool id",
        "str block",
        "extra",
        "missing",
        "list",
    ],
)
def test_a_malformed_or_oversized_search_request_is_refused(message, reason):
    with pytest.raises(errors.BadRequest, match=reason):
        SearchRequest.from_message(message, max_probes=3)


def test_the_matcher_bound_is_the_face_cap_and_none_when_the_cap_is_off():
    assert load_settings({}).max_faces_per_request == 10
    many = {**REQUEST, "probes": ["AAAA"] * 50}
    assert len(SearchRequest.from_message(many, max_probes=None).probes) == 50


def test_the_signature_covers_every_probe_of_the_batch():
    signer = TaskSigner(bytes(range(32)), ttl_s=60)
    args = [SearchRequest.from_message(REQUEST).to_message()]
    signature = signer.sign(TASK_SEARCH, "id-1", args)
    signer.verify(TASK_SEARCH, "id-1", args, {}, signature)
    for probes in (PROBES[:2], PROBES[::-1], [*PROBES, "DDDD"]):
        with pytest.raises(errors.MessageRefused, match="does not verify"):
            signer.verify(TASK_SEARCH, "id-1", [{**args[0], "probes": probes}], {}, signature)


def test_a_search_answer_names_each_probe_by_its_digest():
    answer = SearchAnswer.of("matcher1@host", [p.encode() for p in PROBES], [[], [], []])
    assert [part.probe_sha256 for part in answer.probes] == list(DIGESTS)
    assert SearchAnswer.from_message(answer.to_message()) == answer
    with pytest.raises(ValueError):
        SearchAnswer.of("matcher1@host", [b"AAAA"], [[], []])


@pytest.mark.parametrize(
    "message",
    [
        None,
        {"probes": []},
        {"worker": "m", "probes": {"probe_sha256": "x", "scores": []}},
        {"worker": "m", "probes": [{"scores": []}]},
        {"worker": "m", "probes": [{"probe_sha256": 1, "scores": []}]},
        {"worker": "m", "probes": [{"probe_sha256": "x", "scores": [{"block_no": 0}]}]},
        {"worker": "m", "probes": ["x"]},
    ],
)
def test_a_malformed_search_answer_is_refused(message):
    with pytest.raises(errors.BadRequest):
        SearchAnswer.from_message(message)


# -- the gateway's check of the parts ----------------------------------------------------------


def test_one_part_per_probe_in_the_order_sent_passes():
    checks.check_probe_parts(PLAN, list(DIGESTS))


@pytest.mark.parametrize(
    ("digests", "reason"),
    [
        (DIGESTS[:2], "2 answer parts for 3 probes"),
        ((*DIGESTS, DIGESTS[0]), "4 answer parts for 3 probes"),
        ((DIGESTS[0], DIGESTS[0], DIGESTS[2]), "part 1 is not for probe 1"),
        ((DIGESTS[1], DIGESTS[0], DIGESTS[2]), "part 0 is not for probe 0"),
        ((DIGESTS[0], DIGESTS[1], probe_digest(b"DDDD")), "part 2 is not for probe 2"),
    ],
    ids=["dropped", "added", "repeated", "swapped", "another probe"],
)
def test_a_dropped_repeated_swapped_or_foreign_part_is_refused(digests, reason):
    with pytest.raises(ForgedAnswer, match=reason):
        checks.check_probe_parts(PLAN, list(digests))


# -- the matcher's shard -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("keys")
    generate_keyset(key_dir)
    return PublicContext.load(key_dir / "public.ctx"), SecretContext.load(key_dir / "secret.ctx")


@pytest.fixture(scope="module")
def gallery(keys, tmp_path_factory):
    """A SQLite gallery of one packed block (``PACKED`` templates) and ``DELTA`` delta templates."""
    ctx, _ = keys
    rng = np.random.default_rng(20)
    templates = rng.standard_normal((PACKED + DELTA, DIM))
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    engine = make_engine(load_settings(var_dir=tmp_path_factory.mktemp("db")))
    create_schema(engine)
    sessions = session_factory(engine)
    with session_scope(sessions) as session:
        gallery = Gallery(name="g")
        session.add(gallery)
        session.flush()
        subject = Subject(gallery_id=gallery.id, name="s")
        session.add(subject)
        session.flush()
        import_block(ctx, session, gallery.id, "m1", 0, templates[:PACKED])
        rows = [
            {"gallery_id": gallery.id, "subject_id": subject.id, "model_version": "m1",
             "image_sha256": f"{n:064x}", "block_no": 0, "slot": n, "state": state,
             "ciphertext": encrypt_template(ctx, templates[n], n) if state == "delta" else None}
            for n, state in ((n, "packed" if n < PACKED else "delta") for n in range(PACKED + DELTA))
        ]  # fmt: skip
        session.execute(insert(Template), rows)
        gallery_id = gallery.id
    shard = Shard(ctx, gallery_id, "m1", DIM)
    with session_scope(sessions) as session:
        shard.refresh(session)
    yield shard, templates
    engine.dispose()


def _scores(secret: SecretContext, results) -> dict[tuple[int, str, int], float]:
    """``(block_no, source, slot) -> score`` of decrypted results."""
    found = {}
    for result in results:
        vector = secret.decrypt_scores(result.ciphertext, result.source)
        values = BlockLayout(secret.slots, result.dim).slot_scores(vector, np.asarray(result.slots))
        found.update(
            {(result.block_no, result.source, s): v for s, v in zip(result.slots, values, strict=True)}
        )
    return found


def test_a_batch_scores_each_probe_as_a_search_of_it_alone(keys, gallery):
    ctx, secret = keys
    shard, templates = gallery
    rng = np.random.default_rng(1)
    vectors = templates[[3, PACKED + 1, 11]] + 0.2 * rng.standard_normal((3, DIM)) / np.sqrt(DIM)
    probes = [encrypt_probe(ctx, v / np.linalg.norm(v)) for v in vectors]
    batch = shard.search_batch(probes)
    assert len(batch) == len(probes)
    for probe, vector, results in zip(probes, vectors, batch, strict=True):
        assert [(r.block_no, r.source, r.slots) for r in results] == [
            (0, "block", tuple(range(PACKED))),
            (0, "delta", tuple(range(PACKED, PACKED + DELTA))),
        ]
        alone = _scores(secret, shard.search(probe))
        together = _scores(secret, results)
        assert together.keys() == alone.keys()
        expected = templates @ (vector / np.linalg.norm(vector))
        for (_, _, slot), value in together.items():
            assert abs(value - alone[(0, "block" if slot < PACKED else "delta", slot)]) < 1e-4
            assert abs(value - expected[slot]) < 1e-4


def test_one_bad_probe_fails_the_whole_batch(keys, gallery):
    ctx, _ = keys
    shard, templates = gallery
    good = encrypt_probe(ctx, templates[0])
    with pytest.raises(errors.InvalidCiphertext):
        shard.search_batch([good, encrypt_probe(ctx, np.ones(2 * DIM)), good])


# -- the real stack, with the lying matcher ----------------------------------------------------


def _mosaic(attacked: Attacked) -> bytes:
    """The other photo of each enrolled person, side by side in one image (one row of tiles)."""
    return mosaic([query for _, _, query in attacked.people], columns=len(attacked.people))


def identify_mosaic(attacked: Attacked) -> requests.Response:
    url = f"{attacked.stack.url}/v1/galleries/{GALLERY}/identify"
    return requests.post(url, headers=attacked.headers, files=[("image", _mosaic(attacked))], timeout=120)


def received_searches(attacked: Attacked) -> int:
    """The search messages the matcher received since the logs' mark."""
    log = attacked.logs.since_mark("matcher1")
    return len(re.findall(rf"{re.escape(TASK_SEARCH)}\[[^]]+\] received", log))


@pytest.fixture(scope="module")
def compreface_key(attacked: Attacked) -> str:
    """A CompreFace key bound to the attacked gallery."""
    url = f"mysql+mysqldb://root@{MYSQL_HOST}:3306/{attacked.database}?charset=utf8mb4"
    engine = make_engine(load_settings({}, database_url=url))
    try:
        with session_scope(session_factory(engine)) as session:
            return create_api_key(session, "batched-cf", "admin", gallery=GALLERY, key=str(uuid.uuid4()))
    finally:
        engine.dispose()


@pytest.mark.stack
def test_the_faces_of_an_image_reach_the_matcher_in_one_search(attacked: Attacked):
    attacked.lie("honest")
    attacked.logs.mark()
    r = identify_mosaic(attacked)
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert len(faces) == len(attacked.people)
    assert {face["match"] for face in faces} == {subject for subject, _, _ in attacked.people}
    assert received_searches(attacked) == 1


@pytest.mark.stack
@pytest.mark.parametrize("lie", ["drop_probe", "duplicate_probe", "swap_probes"])
def test_a_lie_on_the_parts_of_a_batch_is_refused(attacked: Attacked, lie: str):
    attacked.lie(lie)
    before = state(attacked, TASK_SEARCH)
    r = identify_mosaic(attacked)
    assert_refused(attacked, r, TASK_SEARCH, before)


@pytest.mark.stack
def test_a_single_face_search_without_its_answer_is_refused(attacked: Attacked):
    attacked.lie("drop_probe")
    before = state(attacked, TASK_SEARCH)
    assert_refused(attacked, identify(attacked, attacked.people[0][2]), TASK_SEARCH, before)
    attacked.lie("honest")
    assert identify(attacked, attacked.people[0][2]).json()["faces"][0]["match"] == attacked.people[0][0]


@pytest.mark.stack
def test_compreface_verify_scores_every_face_against_an_example_in_one_search(
    attacked: Attacked, compreface_key: str
):
    """``faces/{image_id}/verify`` of the mosaic: every face against the first person's template."""
    subject = attacked.people[0][0]
    sql = f"SELECT t.id FROM templates t JOIN subjects s ON s.id = t.subject_id WHERE s.name = '{subject}'"
    ((template_id,),) = attacked.query(sql)
    url = f"{attacked.stack.url}/api/v1/recognition/faces/{image_id_for(template_id)}/verify"

    def verify() -> requests.Response:
        files = [("file", ("mosaic.jpg", _mosaic(attacked)))]
        return requests.post(url, headers={"x-api-key": compreface_key}, files=files, timeout=120)

    attacked.lie("honest")
    attacked.logs.mark()
    r = verify()
    assert r.status_code == 200, r.text
    faces = r.json()["result"]
    assert len(faces) == len(attacked.people) and received_searches(attacked) == 1
    best = max(faces, key=lambda face: face["similarity"])
    assert best["box"]["x_max"] <= 150  # the first tile: the person of the template

    attacked.lie("drop_probe")
    audited = len(attacked.audit_rows())
    assert verify().status_code == 503
    refused = ("forged_scores", GALLERY, f"worker:{attacked.matcher}", "refused")
    assert attacked.audit_rows()[audited:] == [refused]
    attacked.lie("honest")
