"""Queue messages bound to their task: a Redis writer can neither replay nor forge one.

In-process: a sealed image opens only under its own binding (task, gallery, subject, image
hash, expiry) and only if it hashes to the task's image hash; a task signature verifies only
for its own task name, id, arguments and lifetime. On the shared stack (MariaDB + Redis): a
sealed probe image taken from the queue and sent again as an enrollment into another gallery
is refused and stores nothing, whether unsigned, under the probe's signature, or signed with
the task key (as a he-matcher could); unsigned, altered and expired messages are refused by
the embedder and the he-matcher alike; the workers' logs show no ciphertext and no face box.
On the embedded stack: the SQLite queue and result store keep no message once it is consumed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery
from celery.result import AsyncResult
from kombu.utils.uuid import uuid
from sqlalchemy import func, select

from tests.support import REDIS_URL, enroll_main_face
from veilface import errors
from veilface.api import create_app
from veilface.api.gateway import Gateway
from veilface.config import Settings, load_settings
from veilface.crypto.sealing import ImageBinding, PayloadSealer
from veilface.local.stack import Stack
from veilface.messaging.app import make_celery, send_signed
from veilface.messaging.messages import (
    EMBED_QUEUE,
    MATCH_QUEUE,
    TASK_COMPACT,
    TASK_ENROLL,
    TASK_PAIR,
    TASK_PROBE,
    TASK_SEARCH,
    EnrollRequest,
    ProbeRequest,
    SearchRequest,
    b64encode,
)
from veilface.messaging.signing import SIGNATURE_HEADER, TaskSigner
from veilface.store.db import make_engine, session_factory, session_scope
from veilface.store.models import Gallery, Subject, Template

KEY = bytes(range(32))
IMAGE = b"\xff\xd8 not really a photo, but bytes to seal"
GALLERY = "bound"
VICTIM_GALLERY = "bound-victim"
#: A queue no worker reads: where the gateway's probe message waits to be taken by the attacker.
TAP_QUEUE = "bound-tap"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- in-process: the sealing and the signature ---------------------------------------------


def _binding(**changes) -> ImageBinding:
    return replace(ImageBinding(TASK_ENROLL, _sha256(IMAGE), int(time.time()) + 60, 7, "alice"), **changes)


def test_a_sealed_image_opens_only_under_its_own_binding():
    sealer, binding = PayloadSealer(KEY), _binding()
    sealed = sealer.seal(IMAGE, binding)
    assert sealer.open(sealed, binding) == IMAGE
    others = {
        "as a probe": replace(binding, task=TASK_PROBE, gallery_id=None, subject=None),
        "into another gallery": replace(binding, gallery_id=8),
        "for another subject": replace(binding, subject="mallory"),
        "with a later expiry": replace(binding, expires=binding.expires + 3600),
        "under another image hash": replace(binding, image_sha256=_sha256(b"another photo")),
    }
    for what, other in others.items():
        with pytest.raises(errors.MessageRefused, match="failed authentication"):
            sealer.open(sealed, other)
            pytest.fail(f"opened {what}")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for key, data in ((KEY, flipped), (bytes(32), sealed)):
        with pytest.raises(errors.MessageRefused, match="failed authentication"):
            PayloadSealer(key).open(data, binding)


def test_an_expired_image_is_refused():
    sealer, binding = PayloadSealer(KEY), _binding(expires=int(time.time()) - 1)
    sealed = sealer.seal(IMAGE, binding)
    with pytest.raises(errors.MessageRefused, match="expired"):
        sealer.open(sealed, binding)
    assert sealer.open(sealed, binding, now=binding.expires - 10) == IMAGE


def test_an_image_that_does_not_hash_to_its_tasks_image_hash_is_refused():
    """A holder of the queue key sealing one photo under the hash of another (enrollment is
    idempotent per hash: it would pass for a photo already enrolled, or shadow a later one)."""
    sealer, binding = PayloadSealer(KEY), _binding(image_sha256=_sha256(b"another photo"))
    sealed = sealer.seal(IMAGE, binding)
    with pytest.raises(errors.MessageRefused, match="does not match the image hash"):
        sealer.open(sealed, binding)


def test_a_signature_verifies_only_for_its_own_task_id_arguments_and_lifetime():
    signer = TaskSigner(KEY, ttl_s=60)
    args = [SearchRequest(3, "v1", ["AAAA"], [0, 1]).to_message()]
    signature = signer.sign(TASK_SEARCH, "id-1", args)
    signer.verify(TASK_SEARCH, "id-1", tuple(args), {}, signature)  # as a worker sees them
    altered = [{**args[0], "gallery_id": 4}]
    later = {**signature, "expires": signature["expires"] + 1}
    foreign = TaskSigner(bytes(32), 60).sign(TASK_SEARCH, "id-1", args)
    refused = {
        "for another task name": (TASK_PAIR, "id-1", args, {}, signature),
        "for another task id": (TASK_SEARCH, "id-2", args, {}, signature),
        "with altered arguments": (TASK_SEARCH, "id-1", altered, {}, signature),
        "with an added keyword": (TASK_SEARCH, "id-1", args, {"blocks": [9]}, signature),
        "with a later expiry": (TASK_SEARCH, "id-1", args, {}, later),
        "under another key": (TASK_SEARCH, "id-1", args, {}, foreign),
    }
    for what, call in refused.items():
        with pytest.raises(errors.MessageRefused, match="does not verify"):
            signer.verify(*call)
            pytest.fail(f"verified {what}")
    for unsigned in (None, {}, "mac", {"mac": signature["mac"]}, {**signature, "expires": True}):
        with pytest.raises(errors.MessageRefused, match="unsigned"):
            signer.verify(TASK_SEARCH, "id-1", args, {}, unsigned)
    expired = signer.sign(TASK_SEARCH, "id-1", args, now=time.time() - 120)
    with pytest.raises(errors.MessageRefused, match="expired"):
        signer.verify(TASK_SEARCH, "id-1", args, {}, expired)


def test_image_requests_round_trip_and_refuse_malformed_messages():
    enroll = EnrollRequest(7, "alice", _sha256(IMAGE), 123, True, "c2VhbGVk", "v1", None)
    probe = ProbeRequest(_sha256(IMAGE), 123, "c2VhbGVk", as_template=True)
    assert EnrollRequest.from_message(json.loads(json.dumps(enroll.to_message()))) == enroll
    assert ProbeRequest.from_message(json.loads(json.dumps(probe.to_message()))) == probe
    assert enroll.binding() == ImageBinding(TASK_ENROLL, _sha256(IMAGE), 123, 7, "alice")
    assert probe.binding() == ImageBinding(TASK_PROBE, _sha256(IMAGE), 123)
    for message in ([1, 2], "x", {"gallery_id": 7}, {**enroll.to_message(), "evil": True}):
        with pytest.raises(errors.BadRequest, match="malformed"):
            EnrollRequest.from_message(message)


# -- the shared stack on MariaDB + Redis -------------------------------------------------------


@dataclass
class Bound:
    settings: Settings
    stack: Stack
    gateway: Gateway
    celery: Celery
    sealer: PayloadSealer
    signer: TaskSigner
    sessions: object
    redis: redis.Redis
    logs: Path
    #: The victim: a subject of GALLERY and another photo of them.
    victim: tuple[str, Path]
    active_version: str

    def gallery_id(self, name: str) -> int:
        with session_scope(self.sessions) as session:
            return session.scalar(select(Gallery.id).where(Gallery.name == name))

    def stored(self, name: str) -> tuple[int, int]:
        """Subjects and templates of gallery ``name``."""
        gid = self.gallery_id(name)
        with session_scope(self.sessions) as session:
            subjects = session.scalar(select(func.count(Subject.id)).where(Subject.gallery_id == gid))
            templates = session.scalar(select(func.count(Template.id)).where(Template.gallery_id == gid))
        return subjects, templates

    def log_since(self, worker: str, offset: int) -> str:
        return (self.logs / f"{worker}.log").read_bytes()[offset:].decode(errors="replace")

    def log_size(self, worker: str) -> int:
        return (self.logs / f"{worker}.log").stat().st_size


@pytest.fixture(scope="module")
def bound(stack, mysql_redis_env, admin_headers, lfw_people) -> Iterator[Bound]:
    """The victim enrolled in GALLERY, another person in VICTIM_GALLERY; both galleries go at the end."""
    settings = load_settings(mysql_redis_env)
    victim, other = lfw_people[-2], lfw_people[-3]
    enroll_main_face(stack, admin_headers, victim[0], GALLERY)
    enroll_main_face(stack, admin_headers, other[0], VICTIM_GALLERY)
    gateway = create_app(settings).extensions["veilface"]
    client = redis.Redis.from_url(REDIS_URL)
    yield Bound(
        settings,
        stack,
        gateway,
        make_celery(settings),
        PayloadSealer.from_file(settings.queue_key_path),
        TaskSigner.from_file(settings.task_key_path, settings.message_ttl_s),
        session_factory(make_engine(settings)),
        client,
        settings.var_dir / "logs",
        (victim[0].parent.name, victim[1]),
        gateway.registry.active().version,
    )
    client.delete(TAP_QUEUE)
    for gallery in (GALLERY, VICTIM_GALLERY):
        requests.delete(f"{stack.url}/v1/galleries/{gallery}", headers=admin_headers, timeout=60)


def _send(
    celery: Celery, task: str, args: list, queue: str, signature: object = None, task_id: str | None = None
) -> AsyncResult:
    """What a Redis writer can queue: any task, arguments, id and signature header."""
    headers = {} if signature is None else {SIGNATURE_HEADER: signature}
    return celery.send_task(task, args=args, queue=queue, task_id=task_id or uuid(), headers=headers)


def _answer(result: AsyncResult) -> object:
    try:
        return result.get(timeout=90, propagate=False)
    finally:
        result.forget()


def _refused(value: object) -> str:
    """The message of a worker's refusal; fails unless ``value`` is one."""
    assert isinstance(value, dict) and value.get("error", {}).get("code") == "message_refused", value
    return value["error"]["message"]


def _tapped_probe(bound: Bound) -> tuple[dict, dict]:
    """The gateway's probe message for the victim's photo as it lies in Redis: its arguments and headers."""
    photo = bound.victim[1].read_bytes()
    request = ProbeRequest(_sha256(photo), bound.signer.expiry(), model_version=bound.active_version)
    bound.gateway.transport.send(
        TASK_PROBE, [bound.gateway.transport.sealed(request, photo).to_message()], TAP_QUEUE
    )
    (raw,) = bound.redis.lrange(TAP_QUEUE, 0, -1)
    envelope = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return args[0], envelope["headers"]


@pytest.mark.stack
def test_a_probe_image_taken_from_the_queue_does_not_enroll_into_another_gallery(bound: Bound):
    """The replay that enrolled a victim on main: a sealed probe image re-sent as an enrollment."""
    probe, headers = _tapped_probe(bound)
    assert probe["sealed_image"] and headers[SIGNATURE_HEADER]["mac"]
    victim_gallery = bound.gallery_id(VICTIM_GALLERY)
    forged = EnrollRequest(
        victim_gallery,
        "replayed-victim",
        probe["image_sha256"],
        probe["expires"],
        True,
        probe["sealed_image"],
        bound.active_version,
    ).to_message()
    before = bound.stored(VICTIM_GALLERY)
    mark = bound.log_size("embedder1")
    attempts = {
        "unsigned": _send(bound.celery, TASK_ENROLL, [forged], EMBED_QUEUE),
        "under the probe's signature": _send(
            bound.celery, TASK_ENROLL, [forged], EMBED_QUEUE, headers[SIGNATURE_HEADER], headers["id"]
        ),
        # A holder of the task key (every he-matcher) signs it: the image's binding still refuses it.
        "signed with the task key": send_signed(
            bound.celery, bound.signer, TASK_ENROLL, [forged], EMBED_QUEUE
        ),
    }
    reasons = {what: _refused(_answer(result)) for what, result in attempts.items()}
    assert reasons == {
        "unsigned": "unsigned task message",
        "under the probe's signature": "the task message signature does not verify",
        "signed with the task key": (
            "the sealed image failed authentication (sealed for another task, or another queue key)"
        ),
    }
    assert bound.stored(VICTIM_GALLERY) == before
    log = bound.log_since("embedder1", mark)
    assert log.count("WARNING") >= 3 and "Traceback" not in log, log
    # The exact copy, on the queue it was meant for, runs as the probe it is: it stores nothing. (A
    # second client: the first one keeps the answer it had for this task id.)
    client = make_celery(bound.settings)
    replay = _send(client, TASK_PROBE, [probe], EMBED_QUEUE, headers[SIGNATURE_HEADER], headers["id"])
    faces = _answer(replay)
    assert isinstance(faces, list) and faces[0]["ciphertext"], faces
    assert bound.stored(VICTIM_GALLERY) == before


@pytest.mark.stack
def test_unsigned_altered_or_expired_messages_are_refused_by_both_workers(bound: Bound):
    gid, version = bound.gallery_id(GALLERY), bound.active_version
    photo = bound.victim[1].read_bytes()
    probe = bound.gateway.transport.sealed(
        ProbeRequest(_sha256(photo), bound.signer.expiry()), photo
    ).to_message()
    search = SearchRequest(gid, version, ["AAAA"], [0]).to_message()
    elsewhere = {**search, "gallery_id": gid + 1}
    marks = {worker: bound.log_size(worker) for worker in ("embedder1", "matcher1")}

    def signed(task: str, args: list, **sign) -> tuple[list, dict, str]:
        task_id = uuid()
        return args, bound.signer.sign(task, task_id, args, **sign), task_id

    def altered(task: str, args: list, changed: list) -> tuple[list, dict, str]:
        _, signature, task_id = signed(task, args)
        return changed, signature, task_id

    cases = {
        (TASK_PROBE, EMBED_QUEUE, "unsigned"): ([probe], None, None),
        (TASK_PROBE, EMBED_QUEUE, "altered"): altered(TASK_PROBE, [probe], [{**probe, "as_template": True}]),
        (TASK_PROBE, EMBED_QUEUE, "expired"): signed(TASK_PROBE, [probe], now=time.time() - 3600),
        (TASK_PROBE, EMBED_QUEUE, "signed as another task"): signed(TASK_ENROLL, [probe]),
        (TASK_SEARCH, MATCH_QUEUE, "unsigned"): ([search], None, None),
        (TASK_SEARCH, MATCH_QUEUE, "altered"): altered(TASK_SEARCH, [search], [elsewhere]),
        (TASK_PAIR, MATCH_QUEUE, "expired"): signed(TASK_PAIR, ["AAAA", "AAAA"], now=time.time() - 3600),
        (TASK_SEARCH, MATCH_QUEUE, "signed as another task"): signed(TASK_PAIR, [search]),
    }
    for (task, queue, what), (args, signature, task_id) in cases.items():
        reason = _refused(_answer(_send(bound.celery, task, args, queue, signature, task_id)))
        expected = {"unsigned": "unsigned", "expired": "expired"}.get(what, "does not verify")
        assert expected in reason, (task, what, reason)
    # A compaction stores no result: its refusal is the matcher's log line.
    compaction = _send(bound.celery, TASK_COMPACT, [gid, version], MATCH_QUEUE)
    line = f"refused task {TASK_COMPACT}[{compaction.id}]: unsigned task message"
    deadline = time.monotonic() + 60
    while line not in bound.log_since("matcher1", marks["matcher1"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for worker, mark in marks.items():
        log = bound.log_since(worker, mark)
        assert "Traceback" not in log, log
        assert log.count("WARNING") >= 4, log
    assert line in bound.log_since("matcher1", marks["matcher1"])


@pytest.mark.stack
def test_an_image_that_is_not_the_hashed_one_is_refused(bound: Bound):
    """Sealed and signed with the deployment's keys, but the photo is not the one the hash names."""
    photo, other = bound.victim[1].read_bytes(), IMAGE
    request = EnrollRequest(
        bound.gallery_id(GALLERY), "hash-mismatch", _sha256(other), bound.signer.expiry(), True
    )
    sealed = replace(request, sealed_image=b64encode(bound.sealer.seal(photo, request.binding())))
    before = bound.stored(GALLERY)
    result = send_signed(bound.celery, bound.signer, TASK_ENROLL, [sealed.to_message()], EMBED_QUEUE)
    assert _refused(_answer(result)) == "the sealed image does not match the image hash of its task"
    assert bound.stored(GALLERY) == before


#: Base64 text long enough to be a ciphertext or a sealed image, and a face box as a result prints it.
BLOB = re.compile(r"[A-Za-z0-9+/=]{64,}")
BOX = re.compile(r"['\"]box['\"]")


@pytest.mark.stack
def test_worker_logs_hold_no_ciphertext_no_face_box_no_task_values(bound: Bound, admin_headers):
    r = requests.post(
        f"{bound.stack.url}/v1/galleries/{GALLERY}/identify",
        headers=admin_headers,
        files=[("image", bound.victim[1].read_bytes())],
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["faces"][0]["match"] == bound.victim[0], r.text
    for worker in ("embedder1", "matcher1"):
        log = bound.log_since(worker, 0)
        succeeded = [line for line in log.splitlines() if " succeeded in " in line]
        assert succeeded, f"no task ran on {worker}"
        assert all(line.endswith(": (not logged)") for line in succeeded), succeeded[:3]
        assert not BLOB.search(log), BLOB.search(log)
        assert not BOX.search(log), BOX.search(log)


# -- the embedded stack: SQLite queue and result store ------------------------------------------


@pytest.mark.stack
def test_the_embedded_queue_keeps_no_consumed_message(embedded_stack, admin_headers, lfw_people):
    """A demo-like run (enroll, identify, verify); then the queue and result files hold no message,
    not even in freed pages."""
    people = lfw_people[200:203]
    for photos in people:
        enroll_main_face(embedded_stack, admin_headers, photos[0], GALLERY)
    for photos in people:
        r = requests.post(
            f"{embedded_stack.url}/v1/galleries/{GALLERY}/identify",
            headers=admin_headers,
            files=[("image", photos[1].read_bytes())],
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["faces"][0]["match"] == photos[0].parent.name, r.text
    var = Path(embedded_stack.env["VEILFACE_VAR_DIR"])
    with sqlite3.connect(var / "queue.db") as db:
        assert db.execute("SELECT COUNT(*) FROM kombu_message").fetchone() == (0,)
    with sqlite3.connect(var / "results.db") as db:
        assert db.execute("SELECT COUNT(*) FROM celery_taskmeta").fetchone() == (0,)
    for path in sorted(var.glob("queue.db*")) + sorted(var.glob("results.db*")):
        content = path.read_bytes()
        for needle in (b"veilface.embed", b"veilface.match", b"sealed_image", b"model_version"):
            assert needle not in content, (path.name, needle)
