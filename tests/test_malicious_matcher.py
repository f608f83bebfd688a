"""A lying he-matcher against the real stack (MariaDB + Redis): the attacks of issue 20 replayed.

The stack of this module has its own Redis server and MariaDB database, one embedder and,
as its only matcher, ``tests/lying_matcher.py``: the real worker whose search and pair
tasks answer as an attacker holding the matcher would, the lie chosen per test through a
file. Every lie must end in a clean 503 with no decrypted value in the body, an audit row
``forged_scores`` naming the matcher, the refusal counter in ``/metrics`` and an ERROR line
in the gateway's log; an honest answer must still be served.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from tests.support import MYSQL, MYSQL_HOST, Logs, gateway_sender, needs_markers, stack_env
from veilface.crypto.keyfiles import read_key
from veilface.local.services import RedisServer, free_port, wait_for
from veilface.local.stack import REPO, Stack
from veilface.messaging.messages import MATCH_QUEUE, TASK_COMPACT, TASK_PAIR, TASK_SEARCH
from veilface.search.sentinels import MAX_RUN
from veilface.store.db import session_factory, session_scope
from veilface.store.sentinels import SentinelKeeper

pytestmark = pytest.mark.stack

GALLERY = "victims"
REFUSED = "veilface_refused_matcher_answers_total"


@dataclass
class Attacked:
    """The private stack with its lying matcher, and what was enrolled."""

    stack: Stack
    database: str
    headers: dict[str, str]
    mode_file: Path
    logs: Logs
    matcher: str
    #: Enrolled people: (subject, enrolled photo, another photo of them).
    people: list[tuple[str, Path, Path]]

    def lie(self, mode: str) -> None:
        self.mode_file.write_text(mode)

    def post(self, path: str, **files: Path) -> requests.Response:
        return requests.post(
            f"{self.stack.url}{path}",
            headers=self.headers,
            files=[(name, photo.read_bytes()) for name, photo in files.items()],
            timeout=120,
        )

    def query(self, sql: str) -> list[tuple]:
        engine = create_engine(MYSQL.url(self.database))
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql))]
        finally:
            engine.dispose()

    def audit_rows(self) -> list[tuple]:
        return self.query(
            "SELECT action, gallery, subject, outcome FROM audit_log "
            "WHERE action = 'forged_scores' ORDER BY id"
        )

    def states(self) -> list[str]:
        """The enrolled templates' states, sorted: a search meets a packed block and a delta."""
        return sorted(
            state for (state,) in self.query("SELECT state FROM templates WHERE subject_id IS NOT NULL")
        )

    def refused_count(self, task: str) -> float:
        body = requests.get(f"{self.stack.url}/metrics", headers=self.headers, timeout=30).text
        found = re.search(rf'^{REFUSED}{{task="{re.escape(task)}"}} (\S+)$', body, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


def _start_lying_matcher(stack: Stack, mode_file: Path, log_dir: Path) -> subprocess.Popen:
    env = {
        **stack.env,
        "LYING_MATCHER_MODE_FILE": str(mode_file),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), stack.env.get("PYTHONPATH")])),
    }
    argv = [
        str(Path(sys.executable).with_name("celery")),
        *("-A", "tests.lying_matcher", "worker", "-Q", "match", "--pool", "solo", "-n", "matcher1@%h"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"),
    ]
    with (log_dir / "matcher1.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture(scope="module")
@needs_markers("stack")
def attacked(tmp_path_factory, key_dir: Path, lfw_people) -> Iterator[Attacked]:
    folder = tmp_path_factory.mktemp("malicious")
    private_redis = RedisServer(folder / "redis", appendonly=True).start()
    database = f"veilface_malicious_{os.getpid()}"
    env = stack_env(
        folder / "var",
        key_dir,
        VEILFACE_DATABASE_URL=MYSQL.create_database(database),
        VEILFACE_BROKER_URL=private_redis.url,
        VEILFACE_TASK_TIMEOUT_S="60",
    )
    env["VEILFACE_GATEWAY_WORKERS"] = "1"  # one process: its /metrics counts every refusal
    env["VEILFACE_COMPACTION_THRESHOLD"] = "2"  # the first two are packed, the third stays in the delta
    env["VEILFACE_SENTINELS_PER_BLOCK"] = "0"  # that layout exactly: the sentinel tests plant their own
    log_dir = folder / "logs"
    stack = Stack(env=env, bind=f"127.0.0.1:{free_port()}", matchers=0, log_dir=log_dir)
    mode_file = folder / "lie"
    mode_file.write_text("honest")
    stack.start()
    liar = _start_lying_matcher(stack, mode_file, log_dir)
    try:
        stack.wait_ready()
        people = [(photos[0].parent.name, photos[0], photos[1]) for photos in lfw_people[:3]]
        headers = {"X-API-Key": env["VEILFACE_BOOTSTRAP_API_KEY"]}
        matcher = requests.get(f"{stack.url}/readyz", headers=headers, timeout=30).json()["checks"][
            "he_matcher"
        ]["online"]
        attacked = Attacked(stack, database, headers, mode_file, Logs(log_dir), matcher[0]["name"], people)
        for count, (subject, photo, _) in enumerate(people, 1):
            r = attacked.post(f"/v1/galleries/{GALLERY}/subjects/{subject}/faces?face=main", image=photo)
            assert r.status_code == 201, r.text
            if count == 2:  # the second enrollment reaches the threshold: a packed block, then a delta
                wait_for(lambda: attacked.states() == ["packed", "packed"], 120, "the first two to be packed")
        assert attacked.states() == ["delta", "packed", "packed"]
        yield attacked
    finally:
        liar.terminate()
        liar.wait(timeout=30)
        stack.stop()
        private_redis.kill()
        MYSQL.drop_database(database)


def assert_refused(attacked: Attacked, response: requests.Response, task: str, before: tuple) -> None:
    """A clean 503 that carries no number, plus the audit row, the metric and the log line."""
    rows, count = before
    assert response.status_code == 503, response.text[:300]
    body = response.json()
    assert body == {"error": {"code": "unavailable", "message": body["error"]["message"]}}
    assert "refused" in body["error"]["message"] and not re.search(r"\d", body["error"]["message"])
    new_rows = attacked.audit_rows()[len(rows) :]
    gallery = GALLERY if task == TASK_SEARCH else None  # a 1:1 pair searches no gallery
    assert new_rows == [("forged_scores", gallery, f"worker:{attacked.matcher}", "refused")]
    assert attacked.refused_count(task) == count + 1
    line = f"refused the answer of he-matcher {attacked.matcher} to {task}"
    wait_for(lambda: line in attacked.logs.since_mark("gateway"), 10, "the gateway's log line")


def state(attacked: Attacked, task: str) -> tuple:
    attacked.logs.mark()
    return attacked.audit_rows(), attacked.refused_count(task)


def verify_pair(attacked: Attacked, first: Path, second: Path) -> requests.Response:
    return attacked.post("/v1/verify", image1=first, image2=second)


def identify(attacked: Attacked, photo: Path) -> requests.Response:
    return attacked.post(f"/v1/galleries/{GALLERY}/identify", image=photo)


def verify_subject(attacked: Attacked, subject: str, photo: Path) -> requests.Response:
    return attacked.post(f"/v1/galleries/{GALLERY}/subjects/{subject}/verify", image=photo)


def test_honest_answers_pass_every_check(attacked: Attacked):
    attacked.lie("honest")
    audited = len(attacked.audit_rows())
    (alice, enrolled, query), (bob, bob_photo, _) = attacked.people[:2]
    same = verify_pair(attacked, enrolled, query).json()
    other = verify_pair(attacked, enrolled, bob_photo).json()
    assert same["match"] and not other["match"] and -1 <= other["similarity"] < same["similarity"] <= 1
    faces = identify(attacked, query).json()["faces"]
    assert faces[0]["match"] == alice
    assert verify_subject(attacked, alice, query).json()["match"]
    assert not verify_subject(attacked, bob, query).json()["match"]
    assert len(attacked.audit_rows()) == audited


@pytest.mark.parametrize("lie", ["relabel_packed", "relabel"])
def test_a_stolen_template_relabelled_as_a_pair_score_is_refused(attacked: Attacked, lie: str):
    attacked.lie(lie)
    _, enrolled, query = attacked.people[0]
    for _ in range(2):  # a new component at slot 0 each call, as the attack needs
        before = state(attacked, TASK_PAIR)
        assert_refused(attacked, verify_pair(attacked, enrolled, query), TASK_PAIR, before)


@pytest.mark.parametrize("lie", ["relabel_packed", "relabel"])
def test_a_stolen_template_relabelled_as_search_scores_is_refused(attacked: Attacked, lie: str):
    attacked.lie(lie)
    subject, _, query = attacked.people[1]
    before = state(attacked, TASK_SEARCH)
    assert_refused(attacked, identify(attacked, query), TASK_SEARCH, before)
    before = state(attacked, TASK_SEARCH)
    assert_refused(attacked, verify_subject(attacked, subject, query), TASK_SEARCH, before)


def test_an_edited_scale_cannot_forge_a_match(attacked: Attacked):
    attacked.lie("scale")
    (alice, enrolled, _), (_, bob_photo, _) = attacked.people[:2]
    before = state(attacked, TASK_PAIR)
    assert_refused(attacked, verify_pair(attacked, enrolled, bob_photo), TASK_PAIR, before)
    before = state(attacked, TASK_SEARCH)
    assert_refused(attacked, verify_subject(attacked, alice, bob_photo), TASK_SEARCH, before)


def test_a_result_forged_in_the_redis_backend_is_refused(attacked: Attacked):
    attacked.lie("redis")
    _, enrolled, query = attacked.people[2]
    before = state(attacked, TASK_SEARCH)
    assert_refused(attacked, identify(attacked, query), TASK_SEARCH, before)
    before = state(attacked, TASK_PAIR)
    assert_refused(attacked, verify_pair(attacked, enrolled, query), TASK_PAIR, before)
    attacked.lie("honest")
    assert identify(attacked, query).json()["faces"][0]["match"] == attacked.people[2][0]


# -- hidden sentinels ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(attacked: Attacked, key_dir: Path, lfw_people) -> list[tuple[int, int]]:
    """``(block_no, slot)`` of sentinels added by the gateway's own keeper (its key, the stack's
    database), then folded into the packed block with the faces by a fourth enrollment."""
    engine = create_engine(f"mysql+mysqldb://root@{MYSQL_HOST}:3306/{attacked.database}?charset=utf8mb4")
    ((gallery_id, model_version),) = attacked.query(
        "SELECT DISTINCT gallery_id, model_version FROM templates"
    )
    keeper = SentinelKeeper(read_key(key_dir / "sentinel.key"), 8192, key_dir / "public.ctx")
    with session_scope(session_factory(engine)) as session:  # a sentinel at every position: MAX_RUN of them
        assert keeper.top_up(session, gallery_id, model_version) == MAX_RUN
    engine.dispose()
    photo = lfw_people[3][0]
    r = attacked.post(f"/v1/galleries/{GALLERY}/subjects/{photo.parent.name}/faces?face=main", image=photo)
    assert r.status_code == 201, r.text
    # Sent again until it is done: a compaction asked for while another one holds the gallery's
    # lock is skipped, not queued.
    send, deadline = gateway_sender(attacked.stack.env), time.monotonic() + 240
    while attacked.query("SELECT COUNT(*) FROM templates WHERE state = 'delta'") != [(0,)]:
        assert time.monotonic() < deadline, "the delta and the sentinels were not packed"
        send(TASK_COMPACT, [gallery_id, model_version], MATCH_QUEUE)
        time.sleep(15)
    attacked.people.append((photo.parent.name, photo, lfw_people[3][1]))
    return attacked.query(
        "SELECT t.block_no, t.slot FROM templates t JOIN sentinels s ON s.template_id = t.id ORDER BY t.slot"
    )


def test_sentinels_pass_honest_answers_and_never_appear_in_them(attacked: Attacked, planted):
    attacked.lie("honest")
    assert attacked.query("SELECT state FROM templates WHERE subject_id IS NULL") == [("packed",)] * MAX_RUN
    names = {subject for subject, _, _ in attacked.people}
    for subject, _, query in attacked.people:
        r = attacked.post(f"/v1/galleries/{GALLERY}/identify?top_k=50", image=query)
        assert r.status_code == 200, r.text
        face = r.json()["faces"][0]  # the main face
        assert face["match"] == subject
        assert {c["subject"] for c in face["candidates"]} <= names  # only faces rank, never a sentinel
        assert len(face["candidates"]) == len(names)
        assert verify_subject(attacked, subject, query).json()["match"]
    listing = requests.get(f"{attacked.stack.url}/v1/galleries", headers=attacked.headers, timeout=30).json()
    assert [g["templates"] for g in listing["galleries"] if g["name"] == GALLERY] == [len(names)]


def test_one_forged_sentinel_score_is_refused(attacked: Attacked, planted):
    """The lie raises one score by 0.3, inside [-1, 1]: the range and zero checks pass it (see the
    next test), the sentinel's true score, from the embedder, does not."""
    block_no, slot = planted[MAX_RUN // 2]
    attacked.lie(f"shift {block_no} {slot}")
    subject, _, query = attacked.people[0]
    before = state(attacked, TASK_SEARCH)
    assert_refused(attacked, identify(attacked, query), TASK_SEARCH, before)
    assert "a sentinel's score differs" in attacked.logs.since_mark("gateway")
    before = state(attacked, TASK_SEARCH)
    assert_refused(attacked, verify_subject(attacked, subject, query), TASK_SEARCH, before)


def test_the_same_forgery_of_a_face_score_passes_the_other_checks(attacked: Attacked, planted):
    """Why sentinels: a forged face score inside [-1, 1] passes every check that does not know the
    true score. Only sentinels catch such a lie, with the odds in docs/encrypted-search.md."""
    (_, _, query), (bob, _, _) = attacked.people[:2]
    ((block_no, slot),) = attacked.query(
        "SELECT t.block_no, t.slot FROM templates t JOIN subjects s ON s.id = t.subject_id"
        f" WHERE s.name = '{bob}'"
    )
    attacked.lie("honest")
    honest = verify_subject(attacked, bob, query).json()["similarity"]
    attacked.lie(f"shift {block_no} {slot}")
    forged = attacked.post(f"/v1/galleries/{GALLERY}/subjects/{bob}/verify", image=query)
    attacked.lie("honest")
    assert forged.status_code == 200, forged.text
    assert forged.json()["similarity"] == pytest.approx(honest + 0.3, abs=1e-3)
