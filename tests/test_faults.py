"""Faults on a private stack: workers killed mid-task, Redis restarted, MariaDB unreachable,
compaction killed halfway, workers of another key set or model version, hostile messages on
the matcher queues, key rotation, backup and restore.

The stack of this module has its own Redis server (AOF on, as deployed) and its own MariaDB
database reached through a TCP proxy that the tests pause; two embedders and two he-matchers
so that a task of a killed worker is delivered again to the other one. The shared session
stack is never touched. Timeouts are shortened (task 15 s, redelivery 6 s, heartbeat TTL 8 s)
so that every fault resolves in seconds; ``docs/reliability.md`` lists what each test showed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from sqlalchemy import create_engine, text

from tests.support import (
    MYSQL,
    MYSQL_HOST,
    SERVICE_PASSWORD,
    Logs,
    gateway_sender,
    logs_shown_on_failure,
    mosaic,
    needs_markers,
    new_key_set,
    stack_env,
    veilface_cli,
)
from veilface import errors
from veilface.api import create_app
from veilface.config import load_settings
from veilface.local.services import RedisServer, free_port, wait_for
from veilface.local.stack import Stack
from veilface.messaging.messages import MATCH_QUEUE, TASK_COMPACT, TASK_PAIR, TASK_SEARCH, b64encode
from veilface.search.routing import owner

pytestmark = [pytest.mark.stack, pytest.mark.faults]

TASK_TIMEOUT_S = 15
VISIBILITY_S = 6
WORKER_TTL_S = 8
GALLERY = "faults"
#: Worst time a request may take: a task timeout, plus a backend's own retries.
MAX_REQUEST_S = TASK_TIMEOUT_S + 20


# -- infrastructure the tests break -----------------------------------------------------


class TcpProxy:
    """Forwards a local port to MariaDB; :meth:`pause` cuts every connection and refuses new ones.

    This is MariaDB becoming unreachable for the stack only: the shared server, and this
    test's own connections to it, are untouched.
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._paused = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._paused.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def pause(self) -> None:
        self._paused.set()
        with self._lock:
            victims = list(self._sockets)
        for s in victims:
            self._drop(s)

    def resume(self) -> None:
        self._paused.clear()

    def close(self) -> None:
        self._closed.set()
        self.pause()
        self.listener.close()


# -- helpers ------------------------------------------------------------------------------


@dataclass
class Faults:
    stack: Stack
    env: dict[str, str]
    redis: RedisServer
    proxy: TcpProxy
    database: str
    headers: dict[str, str]
    logs: Logs
    #: Enrolled people: (subject, enrolled photo, query photo).
    people: list[tuple[str, Path, Path]] = field(default_factory=list)
    spare: list[list[Path]] = field(default_factory=list)
    #: People only the compaction test enrolls: a fixed set, never the rest of ``spare``, which
    #: a timed enroller consumes for as long as its window lasts (so its leftovers vary).
    compaction_people: list[list[Path]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.stack.url

    def db(self):
        """A connection to the real MariaDB, bypassing the proxy."""
        return create_engine(MYSQL.url(self.database))

    def scalar(self, sql: str, **params):
        engine = self.db()
        try:
            with engine.connect() as conn:
                return conn.execute(text(sql), params).scalar()
        finally:
            engine.dispose()

    def rows(self, sql: str, **params) -> list:
        engine = self.db()
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params))
        finally:
            engine.dispose()

    def execute(self, sql: str, **params) -> None:
        engine = self.db()
        try:
            with engine.begin() as conn:
                conn.execute(text(sql), params)
        finally:
            engine.dispose()

    def take_person(self) -> list[Path]:
        return self.spare.pop(0)

    def restart(self, name: str) -> None:
        """Start worker ``name`` again (after a kill) and wait until Celery says it is ready."""
        kind, index = name.rstrip("0123456789"), int(name[len(name.rstrip("0123456789")) :])
        self.logs.mark()
        self.stack.start_worker(kind, index)
        wait_for(lambda: " ready." in self.logs.since_mark(name), 90, f"{name} to restart")


def enroll(f: Faults, gallery: str, subject: str, photo: Path) -> requests.Response:
    return requests.post(
        f"{f.url}/v1/galleries/{gallery}/subjects/{subject}/faces",
        headers=f.headers,
        files=[("image", photo.read_bytes())],
        params={"face": "main"},
        timeout=MAX_REQUEST_S + 30,
    )


def identify(f: Faults, gallery: str, photo: Path) -> requests.Response:
    return requests.post(
        f"{f.url}/v1/galleries/{gallery}/identify",
        headers=f.headers,
        files=[("image", photo.read_bytes())],
        timeout=MAX_REQUEST_S + 30,
    )


def top1(response: requests.Response) -> str | None:
    faces = response.json()["faces"]
    main = faces[0]  # the main face is listed first
    return main["candidates"][0]["subject"] if main["candidates"] else None


def assert_unavailable(response: requests.Response) -> None:
    """A clean 503: code ``unavailable`` and a Retry-After header, never a trace."""
    assert response.status_code == 503, response.text[:300]
    assert response.json()["error"]["code"] == "unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert "Traceback" not in response.text


def assert_correct_or_unavailable(response: requests.Response, subject: str) -> bool:
    """A search answers with the right person or with a clean 503; True for an answer."""
    if response.status_code == 503:
        assert_unavailable(response)
        return False
    assert response.status_code == 200, response.text[:300]
    assert top1(response) == subject, f"expected {subject}, got {response.json()}"
    return True


def identify_until_correct(f: Faults, gallery: str, subject: str, photo: Path, timeout_s: float = 90):
    """Identify until it answers (every attempt correct or a clean 503)."""
    wait_for(
        lambda: assert_correct_or_unavailable(identify(f, gallery, photo), subject),
        timeout_s,
        f"identify of {subject} to answer",
        interval_s=0.5,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gallery_id(f: Faults, gallery: str) -> int:
    return f.scalar("SELECT id FROM galleries WHERE name = :name", name=gallery)


def set_next_slot(f: Faults, gallery: str, next_slot: int) -> None:
    """Place the next enrollment of ``gallery`` at template position ``next_slot``."""
    f.execute(
        "INSERT INTO slot_counters (gallery_id, model_version, next_slot) VALUES (:g, :v, :n) "
        "ON DUPLICATE KEY UPDATE next_slot = :n",
        g=gallery_id(f, gallery),
        v=load_settings(f.env).recognizer,
        n=next_slot,
    )


def matcher_names(f: Faults) -> dict[str, str]:
    """Stack process name -> Celery node name of every live matcher (``matcher1`` -> ``matcher1@vm``)."""
    rows = f.rows("SELECT name FROM workers WHERE kind = 'matcher'")
    return {name.split("@")[0]: name for (name,) in rows}


# -- the private stack --------------------------------------------------------------------


@pytest.fixture(scope="module")
@needs_markers("stack", "faults")
def faults(tmp_path_factory, key_dir: Path, lfw_people) -> Iterator[Faults]:
    folder = tmp_path_factory.mktemp("faults")
    private_redis = RedisServer(folder / "redis", appendonly=True).start()
    proxy = TcpProxy((MYSQL_HOST, 3306))
    database = f"veilface_faults_{os.getpid()}"
    MYSQL.create_database(database)
    env = stack_env(
        folder / "var",
        key_dir,
        VEILFACE_DATABASE_URL=f"mysql+mysqldb://root@127.0.0.1:{proxy.port}/{database}?charset=utf8mb4",
        **MYSQL.service_urls(database, SERVICE_PASSWORD, port=proxy.port),
        VEILFACE_BROKER_URL=private_redis.url,
        VEILFACE_TASK_TIMEOUT_S=str(TASK_TIMEOUT_S),
        VEILFACE_BROKER_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
        VEILFACE_WORKER_TTL_S=str(WORKER_TTL_S),
    )
    # Compaction is started by the tests themselves, never in the middle of another fault.
    env["VEILFACE_COMPACTION_THRESHOLD"] = "100000"
    stack = Stack(env=env, bind=f"127.0.0.1:{free_port()}", embedders=2, matchers=2, log_dir=folder / "logs")
    headers = {"X-API-Key": env["VEILFACE_BOOTSTRAP_API_KEY"]}
    f = Faults(stack, env, private_redis, proxy, database, headers, Logs(folder / "logs"))
    f.spare = lfw_people[200:]
    f.compaction_people = lfw_people[100:104]
    stack.start()
    try:
        with logs_shown_on_failure(folder / "logs"):
            stack.wait_ready()
            _enroll_people_on_both_matchers(f)
            yield f
    finally:
        stack.stop()
        proxy.close()
        private_redis.kill()
        MYSQL.drop_database(database)


def _enroll_people_on_both_matchers(f: Faults, count: int = 4) -> None:
    """Enroll ``count`` people, each in its own block, half of the blocks owned by each matcher.

    A search then needs both matchers: the case where a missing shard must not go unnoticed.
    """
    first = f.take_person()
    r = enroll(f, GALLERY, first[0].parent.name, first[0])
    assert r.status_code == 201, r.text
    f.people.append((first[0].parent.name, first[0], first[1]))
    names = sorted(matcher_names(f).values())
    assert len(names) == 2
    gid, version = gallery_id(f, GALLERY), load_settings(f.env).recognizer
    owners = {b: owner(names, f"{gid}:{version}:{b}") for b in range(64)}
    elsewhere = [b for b in owners if owners[b] != owners[0]]
    beside = [b for b in owners if b and owners[b] == owners[0]]
    for block_no in [*elsewhere[:2], *beside[:1]][: count - 1]:
        person = f.take_person()
        set_next_slot(f, GALLERY, block_no * 8192)
        r = enroll(f, GALLERY, person[0].parent.name, person[0])
        assert r.status_code == 201, r.text
        f.people.append((person[0].parent.name, person[0], person[1]))
    for subject, _, query in f.people:
        assert top1(identify(f, GALLERY, query)) == subject


# -- killed workers -----------------------------------------------------------------------


def test_embedder_killed_mid_enrollment_lands_exactly_once(faults: Faults):
    person = faults.take_person()
    subject, photo = person[0].parent.name, person[0]
    faults.logs.mark()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(enroll, faults, GALLERY, subject, photo)
        victim = faults.logs.who_received("veilface.embed.enroll", ["embedder1", "embedder2"])
        faults.stack.kill(victim)
        first = pending.result(timeout=MAX_REQUEST_S + 30)
    # The task is delivered again to the other embedder after the visibility timeout.
    if first.status_code != 201:
        assert_unavailable(first)
    again = enroll(faults, GALLERY, subject, photo)
    assert again.status_code == 201, again.text
    if first.status_code == 201:
        assert first.json()["template_ids"] == again.json()["template_ids"]
    time.sleep(VISIBILITY_S + 2)  # any late redelivery has run by now
    rows = faults.rows("SELECT id FROM templates WHERE image_sha256 = :h", h=sha256(photo))
    assert [r[0] for r in rows] == again.json()["template_ids"]
    faults.restart(victim)
    assert top1(identify(faults, GALLERY, person[1])) == subject
    faults.people.append((subject, photo, person[1]))


def test_matcher_killed_mid_search_gives_503_never_a_partial_answer(faults: Faults):
    subject, _, query = faults.people[0]
    names = matcher_names(faults)
    faults.logs.mark()
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(identify, faults, GALLERY, query)
        victim = faults.logs.who_received("veilface.match.search", ["matcher1", "matcher2"])
        faults.stack.kill(victim)
        # Until its heartbeat expires the dead matcher still owns half of the blocks (held
        # live here, so the case cannot slip by): its share never answers, and the search
        # is a 503, never the survivor's half presented as the answer.
        faults.execute(
            "UPDATE workers SET last_seen = UTC_TIMESTAMP() + INTERVAL 1 HOUR WHERE name = :n",
            n=names[victim],
        )
        # Any search needs every block, so any person will do.
        after = pool.submit(identify, faults, GALLERY, faults.people[1][2])
        assert_correct_or_unavailable(in_flight.result(timeout=MAX_REQUEST_S + 30), subject)
        assert_unavailable(after.result(timeout=MAX_REQUEST_S + 30))
    # Once the heartbeat is stale, the survivor takes every block over and answers by itself.
    faults.execute("UPDATE workers SET last_seen = '2000-01-01' WHERE name = :n", n=names[victim])
    for subject, _, query in faults.people:
        identify_until_correct(faults, GALLERY, subject, query)
    faults.restart(victim)
    faults.stack.wait_ready()


def test_the_faces_of_a_small_gallery_are_scored_on_both_matchers(faults: Faults):
    """A gallery one matcher holds whole (one block): the faces of one photo are dealt over both
    matchers (``routing.spread_probes``), each face still matched to its person."""
    gallery, people = "spread", [faults.take_person() for _ in range(3)]
    for person in people:
        r = enroll(faults, gallery, person[0].parent.name, person[0])
        assert r.status_code == 201, r.text
    faults.logs.mark()
    r = requests.post(
        f"{faults.url}/v1/galleries/{gallery}/identify",
        headers=faults.headers,
        files=[("image", mosaic([person[1] for person in people]))],
        timeout=MAX_REQUEST_S + 30,
    )
    assert r.status_code == 200, r.text
    assert sorted(face["match"] for face in r.json()["faces"]) == sorted(p[0].parent.name for p in people)
    for name in ("matcher1", "matcher2"):
        assert "veilface.match.search[" in faults.logs.since_mark(name), f"{name} scored no face"


# -- backends going away under a stream of requests ---------------------------------------


@dataclass
class Outcome:
    kind: str
    subject: str
    photo: Path
    status: int
    code: str | None
    retry_after: str | None
    seconds: float
    body: dict


def _stream(f: Faults, seconds: float, fault: Callable[[], None]) -> list[Outcome]:
    """Identify and enroll from two clients for ``seconds`` while ``fault`` runs; every request
    is bounded by a timeout, and a 503 makes its client wait a little before the next one."""
    stop_at = time.monotonic() + seconds
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def record(kind: str, subject: str, photo: Path, call: Callable[[], requests.Response]) -> None:
        started = time.monotonic()
        r = call()
        body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
        outcome = Outcome(
            kind,
            subject,
            photo,
            r.status_code,
            body.get("error", {}).get("code"),
            r.headers.get("Retry-After"),
            time.monotonic() - started,
            body,
        )
        with lock:
            outcomes.append(outcome)
        if r.status_code == 503:
            time.sleep(0.5)

    def identifier() -> None:
        i = 0
        while time.monotonic() < stop_at:
            subject, _, query = f.people[i % len(f.people)]
            record("identify", subject, query, lambda q=query: identify(f, GALLERY, q))
            i += 1

    def enroller() -> None:
        while time.monotonic() < stop_at and f.spare:
            person = f.take_person()
            subject = person[0].parent.name
            photo = person[0]
            record("enroll", subject, photo, lambda s=subject, p=photo: enroll(f, GALLERY, s, p))

    with ThreadPoolExecutor(2) as pool:
        clients = [pool.submit(identifier), pool.submit(enroller)]
        time.sleep(3)
        fault()
        for client in clients:
            client.result(timeout=seconds + MAX_REQUEST_S + 60)
    return outcomes


def _check_stream(f: Faults, outcomes: list[Outcome], *, waits_count: bool = False) -> None:
    """No answer but a correct one or a clean 503; nothing accepted lost; service back by itself.

    ``waits_count``: a request held until the backend came back (the broker client retries
    for a few seconds) also shows the fault was felt.
    """
    assert outcomes
    tally: dict[str, int] = {}
    for o in outcomes:
        tally[f"{o.kind} {o.status}"] = tally.get(f"{o.kind} {o.status}", 0) + 1
    print(f"outcomes {sorted(tally.items())}, slowest {max(o.seconds for o in outcomes):.1f} s")
    for o in outcomes:
        assert o.status in (200, 201, 503), o
        assert o.seconds < MAX_REQUEST_S, o
        if o.status == 503:
            assert o.code == "unavailable" and o.retry_after and int(o.retry_after) > 0, o
        elif o.kind == "identify":  # queries are of people whose photos match (checked at setup)
            assert o.body["faces"][0]["candidates"][0]["subject"] == o.subject, o
    felt = [o for o in outcomes if o.status == 503 or (waits_count and o.seconds > 3)]
    assert felt, "the fault went unnoticed"
    assert any(o.status in (200, 201) for o in outcomes)
    f.stack.wait_ready(timeout_s=90)
    subject, _, query = f.people[0]
    identify_until_correct(f, GALLERY, subject, query)
    for o in outcomes:
        if o.kind != "enroll":
            continue
        if o.status == 201:  # accepted: must be there, once
            rows = f.rows("SELECT id FROM templates WHERE image_sha256 = :h", h=sha256(o.photo))
            assert [r[0] for r in rows] == o.body["template_ids"], o
        else:  # not accepted: a retry lands it exactly once
            r = enroll(f, GALLERY, o.subject, o.photo)
            assert r.status_code == 201, r.text
            assert f.scalar("SELECT COUNT(*) FROM templates WHERE image_sha256 = :h", h=sha256(o.photo)) == 1


def test_redis_restart_under_load(faults: Faults):
    def crash_and_restart() -> None:
        faults.redis.kill()
        time.sleep(5)
        faults.redis.start()

    outcomes = _stream(faults, 25, crash_and_restart)
    _check_stream(faults, outcomes, waits_count=True)


def test_every_redis_failure_of_a_task_call_is_unavailable_never_an_error(faults: Faults):
    """Redis dies while the gateway waits for a task, and is still down for the next one.

    Celery reports this in several ways: a kombu ``OperationalError`` when sending, a bare
    ``RuntimeError`` when its result consumer gives up reconnecting (in ``get()``,
    ``forget()`` or the subscription that sending makes), a Redis ``ConnectionError``. Each
    must reach the client as 503 ``unavailable``; anything else would be a 500.
    """
    gateway = create_app(load_settings(faults.env)).extensions["veilface"]
    outcome: dict[str, BaseException] = {}

    def call_a_task_nobody_answers() -> None:
        try:
            gateway.transport.call("veilface.test.unanswered", [], "veilface-test-nobody")
        except BaseException as exc:  # the test inspects whatever came out
            outcome["error"] = exc

    waiting = threading.Thread(target=call_a_task_nobody_answers)
    waiting.start()
    time.sleep(1)
    faults.redis.kill()
    try:
        waiting.join(TASK_TIMEOUT_S + 10)
        assert not waiting.is_alive()
        assert isinstance(outcome["error"], errors.Unavailable), repr(outcome["error"])
        assert outcome["error"].message == "the result backend is unreachable"
        with pytest.raises(errors.Unavailable):
            gateway.transport.call("veilface.test.unanswered", [], "veilface-test-nobody")
        # What the result consumer raises when its reconnect budget is spent, whatever the cause
        # in the backend's own list of connection errors; any other RuntimeError is a bug.
        with pytest.raises(errors.Unavailable), gateway.transport.unavailable_if_lost("lost"):
            raise RuntimeError("retry limit exceeded") from KeyError("stale socket")
        with pytest.raises(RuntimeError), gateway.transport.unavailable_if_lost("lost"):
            raise RuntimeError("a bug")
    finally:
        faults.redis.start()
    faults.stack.wait_ready(timeout_s=90)
    subject, _, query = faults.people[0]
    identify_until_correct(faults, GALLERY, subject, query)


def test_mariadb_unreachable_for_ten_seconds_under_load(faults: Faults):
    def outage() -> None:
        faults.proxy.pause()
        time.sleep(10)
        faults.proxy.resume()

    outcomes = _stream(faults, 25, outage)
    _check_stream(faults, outcomes)


# -- compaction killed halfway ------------------------------------------------------------


def test_compaction_killed_halfway_stays_correct_and_the_next_one_finishes(faults: Faults):
    gallery = "compaction"
    people = faults.compaction_people
    subjects = [p[0].parent.name for p in people]
    assert enroll(faults, gallery, subjects[0], people[0][0]).status_code == 201
    # Two templates at the end of block 0 and two at the start of block 1 (plus the first).
    set_next_slot(faults, gallery, 8192 - 1)
    for person, subject in zip(people[1:], subjects[1:], strict=True):
        assert enroll(faults, gallery, subject, person[0]).status_code == 201
    gid = gallery_id(faults, gallery)
    version = load_settings(faults.env).recognizer
    assert faults.scalar("SELECT COUNT(DISTINCT block_no) FROM templates WHERE gallery_id = :g", g=gid) == 2

    send = gateway_sender(faults.env)
    faults.logs.mark()
    send(TASK_COMPACT, [gid, version], MATCH_QUEUE)
    compactor = faults.logs.who_received(TASK_COMPACT, ["matcher1", "matcher2"])
    wait_for(
        lambda: faults.scalar("SELECT COUNT(*) FROM blocks WHERE gallery_id = :g", g=gid),
        120,
        "block 0 to be compacted",
        0.05,
    )
    faults.stack.kill(compactor)
    states = dict(
        faults.rows(
            "SELECT block_no, GROUP_CONCAT(DISTINCT state) FROM templates WHERE gallery_id = :g "
            "GROUP BY block_no",
            g=gid,
        )
    )
    assert states == {0: "packed", 1: "delta"}, "the kill did not land between the two blocks"
    # Its heartbeat is left to expire (as the search test shows, searches are 503 until then).
    faults.execute(
        "UPDATE workers SET last_seen = '2000-01-01' WHERE name = :n", n=matcher_names(faults)[compactor]
    )
    for index in (0, 3):  # one person per block: packed block 0 and delta of block 1
        identify_until_correct(faults, gallery, subjects[index], people[index][1])

    # The next compaction (a redelivery, or the next request, as here) finishes the job; two
    # requests at once must not fold the same block twice.
    for _ in range(2):
        send(TASK_COMPACT, [gid, version], MATCH_QUEUE)
    faults.restart(compactor)
    wait_for(
        lambda: (
            faults.scalar("SELECT COUNT(*) FROM templates WHERE gallery_id = :g AND state = 'delta'", g=gid)
            == 0
        ),
        180,
        "the next compaction to finish",
    )
    assert faults.scalar("SELECT COUNT(*) FROM blocks WHERE gallery_id = :g", g=gid) == 2
    for person, subject in zip(people, subjects, strict=True):
        identify_until_correct(faults, gallery, subject, person[1])


# -- workers that do not belong -----------------------------------------------------------


@pytest.fixture(scope="module")
def foreign_keys(tmp_path_factory) -> Path:
    return new_key_set(tmp_path_factory.mktemp("foreign-keys"))


def test_worker_of_another_key_set_refuses_to_start(faults: Faults, foreign_keys: Path):
    intruder = Stack(env={**faults.env, "VEILFACE_KEY_DIR": str(foreign_keys)}, log_dir=faults.stack.log_dir)
    name = intruder.start_worker("matcher", 9)
    proc = intruder.processes[name]
    assert proc.wait(timeout=WORKER_TTL_S + 60) == 3
    log = (faults.stack.log_dir / f"{name}.log").read_text()
    assert "refusing to start" in log and "is not this deployment's key set" in log
    assert requests.get(f"{faults.url}/readyz", timeout=10).status_code == 200


def test_gateway_ignores_a_live_matcher_of_another_key_set_and_fails_readiness(faults: Faults):
    name = "matcher-foreign@elsewhere"
    faults.execute(
        "INSERT INTO workers (name, kind, queue, key_fingerprint, started_at, last_seen) "
        "VALUES (:n, 'matcher', :q, :k, UTC_TIMESTAMP(), UTC_TIMESTAMP() + INTERVAL 1 HOUR)",
        n=name,
        q=f"match.{name}",
        k="f" * 64,
    )
    try:
        ready = requests.get(f"{faults.url}/readyz", headers=faults.headers, timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["he_matcher"]["refused_foreign_keys"] == [name]
        # Never sent work: nobody consumes its queue, so a routed search would time out.
        for subject, _, query in faults.people[:4]:
            started = time.monotonic()
            r = identify(faults, GALLERY, query)
            assert r.status_code == 200 and top1(r) == subject
            assert time.monotonic() - started < TASK_TIMEOUT_S
        assert (
            "ignoring he-matcher matcher-foreign@elsewhere"
            in (faults.stack.log_dir / "gateway.log").read_text()
        )
    finally:
        faults.execute("DELETE FROM workers WHERE name = :n", n=name)
    wait_for(lambda: requests.get(f"{faults.url}/readyz", timeout=10).status_code == 200, 30, "readiness")


def test_embedder_of_another_model_version_is_refused(faults: Faults, tmp_path: Path):
    from veilface.models.registry import ModelRegistry

    other = load_settings({**faults.env, "VEILFACE_MODEL_DIR": str(tmp_path)})
    ModelRegistry(other).activate("edgeface_xxs")
    stray = Stack(env={**faults.env, "VEILFACE_MODEL_DIR": str(tmp_path)}, log_dir=faults.stack.log_dir)
    faults.logs.mark()
    name = stray.start_worker("embedder", 3)
    try:
        wait_for(lambda: " ready." in faults.logs.since_mark(name), 90, f"{name} to start")

        def refused() -> dict | None:
            ready = requests.get(f"{faults.url}/readyz", headers=faults.headers, timeout=10)
            report = ready.json()["checks"]["embedder"]
            return report if report["wrong_model_version"] else None

        report = wait_for(refused, 30, "readyz to report the stray embedder")
        assert report["ok"] is False and report["wrong_model_version"][0].startswith(f"{name}@")
        # With the two good embedders stopped, every probe goes to the stray one: refused, 503.
        for good in ("embedder1", "embedder2"):
            faults.stack.kill(good, signal.SIGTERM)
        subject, _, query = faults.people[0]
        assert_unavailable(identify(faults, GALLERY, query))
        assert "refusing task: this embedder makes edgeface_xxs embeddings" in faults.logs.since_mark(name)
    finally:
        stray.kill(name, signal.SIGTERM)
        for good in ("embedder1", "embedder2"):
            if good not in faults.stack.processes:
                faults.restart(good)
    faults.stack.wait_ready()
    identify_until_correct(faults, GALLERY, subject, query)


# -- hostile messages straight onto the matcher queues ------------------------------------


def test_hostile_messages_on_matcher_queues_are_refused_without_a_crash(faults: Faults, foreign_keys: Path):
    """Messages signed with the task key (as the gateway's, or a holder of task.key) but with hostile
    contents; unsigned ones are refused before they are read (tests/test_bound_messages.py)."""
    from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
    from veilface.messaging.app import make_celery

    settings = load_settings(faults.env)
    celery = make_celery(settings)
    send = gateway_sender(faults.env)
    own = PublicContext.load(settings.public_context_path)
    foreign = PublicContext.load(foreign_keys / "public.ctx")
    vector = np.random.default_rng(3).normal(size=512)
    probe = encrypt_probe(own, vector)
    gid = gallery_id(faults, GALLERY)

    def search(probe_b64: object, **changes) -> dict:
        message = {"gallery_id": gid, "model_version": settings.recognizer, "probe": probe_b64, "blocks": [0]}
        return {**message, **changes}

    malformed = {
        "foreign key set": search(b64encode(encrypt_probe(foreign, vector))),
        "template as probe": search(b64encode(encrypt_template(own, vector, 3))),
        "truncated probe": search(b64encode(probe[: len(probe) // 2])),
        "flipped bytes": search(
            b64encode(probe[:40] + bytes(b ^ 0xFF for b in probe[40:4000]) + probe[4000:])
        ),
        "random bytes": search(b64encode(os.urandom(4096))),
        "header only": search(b64encode(probe[:14])),
        "huge dimension": search(b64encode(probe[:5] + bytes([200]) + probe[6:])),
        "not base64": search("%%% not base64 %%%"),
        "probe is a number": search(12),
        "missing fields": {"probe": b64encode(probe)},
        "extra fields": search(b64encode(probe), evil=True),
        "not an object": [1, 2, 3],
    }
    # Well-formed but odd: answered (an empty or ordinary result) or refused, never a crash.
    odd = {
        "gallery is text": search(b64encode(probe), gallery_id="x' OR 1=1 --"),
        "a million blocks": search(b64encode(probe), blocks=list(range(1_000_000))),
        "unknown gallery": search(b64encode(probe), gallery_id=10**12),
    }
    names = matcher_names(faults)
    pending = []
    for what, message in {**malformed, **odd}.items():
        for queue in (f"match.{names['matcher1']}", f"match.{names['matcher2']}"):
            pending.append((what, send(TASK_SEARCH, [message], queue)))
    pending.append(("pair of garbage", send(TASK_PAIR, ["AAAA", 7], MATCH_QUEUE)))
    foreign_pair = [malformed["foreign key set"]["probe"], b64encode(encrypt_template(foreign, vector, 0))]
    pending.append(("pair, foreign", send(TASK_PAIR, foreign_pair, MATCH_QUEUE)))
    # A compaction stores no result: the matchers staying alive below is what it shows.
    send(TASK_COMPACT, ["x", None], MATCH_QUEUE)
    for what, result in pending:
        value = result.get(timeout=120, propagate=False)
        # Refused as an error result (one log line in the matcher), not an exception.
        refused = isinstance(value, dict) and "error" in value
        assert refused or what in odd, (what, value)
        result.forget()
    # A pickled message (code execution on load, were it accepted) is refused by the consumer.
    with celery.connection_for_write() as conn:
        channel = conn.default_channel
        pickled = channel.prepare_message(
            b"\x80\x04K\x01.",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"task": TASK_SEARCH},
        )
        channel.basic_publish(pickled, exchange="", routing_key=MATCH_QUEUE)
    time.sleep(1)
    for name in ("matcher1", "matcher2"):
        assert faults.stack.processes[name].poll() is None, f"{name} died"
    for subject, _, query in faults.people[:4]:
        assert top1(identify(faults, GALLERY, query)) == subject


# -- key rotation, backup and restore -----------------------------------------------------


def test_backup_restore_then_search_then_rotate_keys(faults: Faults, tmp_path: Path):
    backup_dir, keys_backup = tmp_path / "backup", tmp_path / "backup-keys"
    done = veilface_cli(faults.env, "backup", str(backup_dir), "--keys-out", str(keys_backup))
    assert "keys: key set" in done.stdout
    assert (
        not (backup_dir / "secret.ctx").exists() and (keys_backup / "secret.ctx").stat().st_mode & 0o077 == 0
    )

    # Disaster: a new database and an empty key folder, restored from the two backups.
    restored_db = f"veilface_restored_{os.getpid()}"
    key_dir = tmp_path / "restored-keys"
    env = stack_env(
        tmp_path / "var",
        key_dir,
        VEILFACE_DATABASE_URL=MYSQL.create_database(restored_db),
        **MYSQL.service_urls(restored_db, SERVICE_PASSWORD),
        VEILFACE_BROKER_URL=f"redis://127.0.0.1:{faults.redis.port}/1",
        VEILFACE_TASK_TIMEOUT_S=str(TASK_TIMEOUT_S),
        VEILFACE_WORKER_TTL_S=str(WORKER_TTL_S),
    )
    try:
        refused = veilface_cli(env, "restore", str(backup_dir), check=False)
        assert refused.returncode != 0 and "--keys-from" in refused.stdout + refused.stderr
        veilface_cli(env, "restore", str(backup_dir), "--keys-from", str(keys_backup))
        again = veilface_cli(env, "restore", str(backup_dir), check=False)
        assert again.returncode != 0 and "--force" in again.stdout + again.stderr
        stack = Stack(env=env, bind=f"127.0.0.1:{free_port()}", log_dir=tmp_path / "logs")
        restored = Faults(
            stack, env, faults.redis, faults.proxy, restored_db, faults.headers, Logs(tmp_path / "logs")
        )
        stack.start()
        try:
            stack.wait_ready()
            for subject, _, query in faults.people[:4]:
                r = identify(restored, GALLERY, query)
                assert r.status_code == 200 and top1(r) == subject

            # Rotation: running workers of the old key set stop by themselves; after the
            # restart nothing matches until the subjects are enrolled again.
            done = veilface_cli(env, "keys", "rotate", "--yes")
            assert "must be enrolled again" in done.stdout
            for name in ("embedder1", "matcher1"):
                assert stack.processes[name].wait(timeout=60) is not None
            assert "refuses to go on serving" in (tmp_path / "logs" / "matcher1.log").read_text()
            stack.stop()
            stack.start()
            stack.wait_ready()
            subject, photo, query = faults.people[0]
            r = identify(restored, GALLERY, query)
            assert r.status_code == 200 and top1(r) is None
            listing = requests.get(
                f"{stack.url}/v1/galleries/{GALLERY}/subjects", headers=faults.headers, timeout=30
            ).json()
            assert listing["subjects"] and all(s["needs_reenrollment"] for s in listing["subjects"])
            assert enroll(restored, GALLERY, subject, photo).status_code == 201
            assert top1(identify(restored, GALLERY, query)) == subject
        finally:
            stack.stop()
    finally:
        MYSQL.drop_database(restored_db)
        shutil.rmtree(key_dir, ignore_errors=True)
