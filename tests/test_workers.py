"""The worker tasks in-process: real keys, real photos, a real MariaDB store, no Celery worker.

The embedder and he-matcher modules open nothing when imported, so their task bodies run
here as Celery would run them (signed, through :class:`~veilface.workers.runtime.SignedTask`),
and their answers are decrypted with the secret key as the gateway does.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from celery import Task
from celery.exceptions import Retry
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from tests.support import MYSQL
from veilface.config import Settings, load_settings
from veilface.crypto.public import PublicContext, encrypt_probe, encrypt_template
from veilface.crypto.sealing import PayloadSealer
from veilface.crypto.secret import SecretContext
from veilface.eval.encrypted import decrypt_similarity
from veilface.local.stack import REPO
from veilface.messaging.messages import (
    EnrollRequest,
    EnrollResult,
    Probe,
    ProbeRequest,
    ScoreAnswer,
    SearchAnswer,
    SearchRequest,
    b64decode,
    b64encode,
)
from veilface.messaging.signing import SIGNATURE_HEADER, TaskSigner
from veilface.search import ranking, repository
from veilface.search.pair import score_pair
from veilface.store import galleries as store
from veilface.store.db import create_schema, make_engine, session_factory, session_scope
from veilface.workers import embedder, matcher
from veilface.workers.runtime import WorkerRuntime

GALLERY = "workers"
#: The node name the tasks run under (a matcher signs its answers with it).
WORKER = "worker1@test"


@dataclass
class Workers:
    """The environment the in-process workers read, and the gateway's side of the keys."""

    settings: Settings
    secret: SecretContext
    signer: TaskSigner
    sealer: PayloadSealer
    gallery_id: int

    def call(self, task: Task, *args: object) -> object:
        """Run ``task`` as a worker runs a message the gateway signed."""
        task_id = uuid.uuid4().hex
        signature = self.signer.sign(task.name, task_id, list(args))
        request = {"id": task_id, "args": list(args), "kwargs": {}, "hostname": WORKER}
        task.push_request(**request, **{SIGNATURE_HEADER: signature})
        try:
            return task(*args)
        finally:
            task.pop_request()

    def sealed(self, request: EnrollRequest | ProbeRequest, image: bytes) -> dict:
        return replace(
            request, sealed_image=b64encode(self.sealer.seal(image, request.binding()))
        ).to_message()

    def enroll(self, subject: str, photo: Path) -> EnrollResult:
        image = photo.read_bytes()
        digest = hashlib.sha256(image).hexdigest()
        request = EnrollRequest(self.gallery_id, subject, digest, self.signer.expiry(), main_face=True)
        return EnrollResult.from_message(self.call(embedder.enroll, self.sealed(request, image)))

    def probe(self, photo: Path, *, as_template: bool = False) -> Probe:
        image = photo.read_bytes()
        digest = hashlib.sha256(image).hexdigest()
        request = ProbeRequest(digest, self.signer.expiry(), as_template=as_template)
        (main, *_) = self.call(embedder.probe, self.sealed(request, image))
        return Probe.from_message(main)

    def identify(self, probe: Probe) -> list[tuple[str, float]]:
        """Every subject ranked by the matcher's scores on blocks 0 and 1, decrypted here."""
        message = SearchRequest(self.gallery_id, probe.model_version, [probe.ciphertext], [0, 1]).to_message()
        (part,) = SearchAnswer.from_message(self.call(matcher.search, message)).probes
        decrypted = [(r, self.secret.decrypt_scores(r.ciphertext, r.source)) for r in part.scores]
        with session_scope(matcher.worker().runtime.sessions) as session:
            owners = store.slot_owners(session, self.gallery_id, probe.model_version)
        live = {slot: owner.subject for slot, owner in owners.items()}
        return ranking.top_k(decrypted, live, len(live), self.secret.slots)


@pytest.fixture(scope="module")
def workers(tmp_path_factory, key_dir: Path) -> Iterator[Workers]:
    """The environment of one embedder and one matcher process, on a fresh MariaDB database."""
    database = f"veilface_workers_{os.getpid()}"
    environ = {
        "VEILFACE_VAR_DIR": str(tmp_path_factory.mktemp("workers-var")),
        "VEILFACE_KEY_DIR": str(key_dir),
        "VEILFACE_DATABASE_URL": MYSQL.create_database(database),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:
            if name.startswith("VEILFACE_") and name not in ("VEILFACE_SHARED_DIR", "VEILFACE_ONNX_THREADS"):
                patch.delenv(name)
        for name, value in environ.items():
            patch.setenv(name, value)
        settings = load_settings()
        engine = make_engine(settings)
        create_schema(engine)
        with session_scope(session_factory(engine)) as session:
            gallery_id = store.get_or_create_gallery(session, GALLERY).id
        engine.dispose()
        secret = SecretContext.load(settings.secret_context_path)
        signer = TaskSigner.from_file(settings.task_key_path, settings.message_ttl_s)
        sealer = PayloadSealer.from_file(settings.queue_key_path)
        embedder.worker.cache_clear()
        matcher.worker.cache_clear()
        try:
            yield Workers(settings, secret, signer, sealer, gallery_id)
        finally:
            embedder.worker.cache_clear()
            matcher.worker.cache_clear()
            MYSQL.drop_database(database)


def test_importing_a_worker_opens_nothing(tmp_path: Path):
    """No database, no key, no folder: the imports succeed and leave the apps unconfigured."""
    var_dir = tmp_path / "var"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VEILFACE_")},
        "VEILFACE_DATABASE_URL": "mysql+mysqldb://nobody@127.0.0.1:9/nothing",
        "VEILFACE_KEY_DIR": str(tmp_path / "no-keys"),
        "VEILFACE_VAR_DIR": str(var_dir),
        "PYTHONPATH": str(REPO),
    }
    script = (
        "import runpy\n"
        "from veilface.workers import embedder, matcher\n"
        "for module in (embedder, matcher):\n"
        "    assert not module.app.configured and module.worker.cache_info().currsize == 0\n"
        "for entry in ('services/embedder/tasks.py', 'services/he-matcher/tasks.py'):\n"
        "    assert runpy.run_path(entry)['app'] in (embedder.app, matcher.app)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert not var_dir.exists()


def test_enroll_probe_search_and_compact_in_process(workers: Workers, lfw_people):
    (first, *_), (second, *_) = lfw_people[0], lfw_people[1]
    alice, bob = first.parent.name, second.parent.name
    enrolled = workers.enroll(alice, first)
    assert enrolled.created and workers.enroll(bob, second).created
    again = workers.enroll(alice, first)  # idempotent per image hash
    assert (again.template_id, again.created) == (enrolled.template_id, False)

    probe = workers.probe(lfw_people[0][1])
    assert probe.ciphertext is not None and probe.model_version == enrolled.model_version
    ranked = workers.identify(probe)
    assert [subject for subject, _ in ranked] == [alice, bob]
    threshold = embedder.worker().active.registry.get(probe.model_version).threshold
    assert ranked[0][1] >= threshold > ranked[1][1]

    assert workers.call(matcher.compact, workers.gallery_id, probe.model_version) == {
        "folded": 2,
        "repacked": 0,
    }
    packed = workers.identify(probe)  # the same scores, now from the packed block
    assert [subject for subject, _ in packed] == [alice, bob]
    assert np.allclose([s for _, s in packed], [s for _, s in ranked], atol=1e-3)


def test_an_unsigned_task_is_refused_before_it_runs(workers: Workers):
    answer = embedder.enroll({"gallery_id": workers.gallery_id})
    assert answer == {"error": {"code": "message_refused", "message": "unsigned task message"}}


def test_pair_task_is_the_evaluation_kernel(workers: Workers, lfw_people):
    """The matcher's 1:1 answer decrypts to exactly what the encrypted evaluation computes."""
    photos = lfw_people[2]
    probe, template = workers.probe(photos[0]), workers.probe(photos[1], as_template=True)
    answer = ScoreAnswer.from_message(workers.call(matcher.pair, probe.ciphertext, template.ciphertext))
    (result,) = answer.scores
    ctx = matcher.worker().runtime.context
    evaluated = score_pair(ctx, b64decode(probe.ciphertext), b64decode(template.ciphertext))
    same = decrypt_similarity(workers.secret, result)
    assert same == decrypt_similarity(workers.secret, evaluated)
    assert same > embedder.worker().active.registry.get(probe.model_version).threshold
    _pair_matches_plaintext(ctx, workers.secret)


def _pair_matches_plaintext(ctx: PublicContext, secret: SecretContext) -> None:
    rng = np.random.default_rng(17)
    a, b = rng.normal(size=(2, ctx.params.max_dim))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    result = score_pair(ctx, encrypt_probe(ctx, a), encrypt_template(ctx, b, 0))
    assert decrypt_similarity(secret, result) == pytest.approx(float(a @ b), abs=1e-3)


def test_the_idempotent_tasks_retry_transient_errors_and_the_others_declare_none(workers: Workers):
    for task in (embedder.enroll, matcher.search, matcher.compact):
        assert all(issubclass(error, task.autoretry_for) for error in (OperationalError, ConnectionError))
        assert task.max_retries == 3 and task.retry_backoff
    for task in (embedder.probe, matcher.pair):
        assert not getattr(task, "autoretry_for", ())


def test_a_lost_database_sends_the_search_again_signed(workers: Workers, monkeypatch):
    """The retry is a real message on the broker with the same id, arguments and signature."""
    runtime = matcher.worker().runtime
    dead = create_engine("mysql+mysqldb://nobody@127.0.0.1:9/nothing")
    lost = matcher.Matcher(
        WorkerRuntime(workers.settings, session_factory(dead), runtime.context, runtime.signer)
    )
    monkeypatch.setattr(matcher, "worker", lambda: lost)
    ctx, task = runtime.context, matcher.search
    probe = b64encode(encrypt_probe(ctx, np.eye(ctx.params.max_dim)[0]))
    args = [SearchRequest(workers.gallery_id, "any", [probe], [0]).to_message()]
    task_id, queue = uuid.uuid4().hex, f"match.retry-{uuid.uuid4().hex[:8]}"
    signature = workers.signer.sign(task.name, task_id, args)
    task.push_request(
        id=task_id,
        args=args,
        kwargs={},
        called_directly=False,
        delivery_info={"exchange": "", "routing_key": queue},
        **{SIGNATURE_HEADER: signature},
    )
    try:
        with pytest.raises(Retry) as retry:
            task(*args)
    finally:
        task.pop_request()
    assert isinstance(retry.value.exc, OperationalError) and 0 <= retry.value.when <= 1
    with matcher.app.connection_for_read() as conn:
        message = conn.SimpleQueue(queue).get(timeout=10)
        message.ack()
    headers = message.headers
    assert (headers["id"], headers["retries"], headers[SIGNATURE_HEADER]) == (task_id, 1, signature)
    resent_args, resent_kwargs, _ = message.decode()
    workers.signer.verify(task.name, headers["id"], resent_args, resent_kwargs, headers[SIGNATURE_HEADER])


def test_the_compaction_lock_is_per_database(workers: Workers):
    """Two stacks on one server (two databases) compact the same gallery at once; one stack does not."""
    other = f"veilface_workers_other_{os.getpid()}"
    here, there = create_engine(workers.settings.sqlalchemy_url), create_engine(MYSQL.create_database(other))
    try:
        assert matcher.compaction_lock_name(here, 1, "m") != matcher.compaction_lock_name(there, 1, "m")
        with (
            matcher._compaction_lock(here, 1, "m") as first,
            matcher._compaction_lock(there, 1, "m") as elsewhere,
            matcher._compaction_lock(here, 1, "m") as second,
        ):
            assert (first, elsewhere, second) == (True, True, False)
    finally:
        here.dispose()
        there.dispose()
        MYSQL.drop_database(other)


def test_templates_enrolled_during_a_compaction_are_folded_by_it(workers: Workers, lfw_people, monkeypatch):
    """The compactions that enrollments ask for during a fold find the lock taken and return, so
    the running one folds again while the delta is past the threshold (here 1)."""
    runtime = matcher.worker().runtime
    monkeypatch.setattr(runtime, "settings", replace(runtime.settings, compaction_threshold=1))
    (first, *_), (second, *_) = lfw_people[2], lfw_people[3]
    version = workers.enroll(first.parent.name, first).model_version
    fold, late = matcher.compact_block, []

    def fold_while_one_more_is_enrolled(*args):
        folded = fold(*args)
        if not late:
            late.append(workers.enroll(second.parent.name, second))
            with matcher._compaction_lock(runtime.sessions.kw["bind"], workers.gallery_id, args[3]) as free:
                assert not free, "the compaction that enrollment asks for returns at once"
        return folded

    monkeypatch.setattr(matcher, "compact_block", fold_while_one_more_is_enrolled)
    result = workers.call(matcher.compact, workers.gallery_id, version)
    assert late and result["folded"] >= 2, result
    with session_scope(runtime.sessions) as session:
        assert repository.delta_index(session, workers.gallery_id, version) == []
