"""What the gateway does for a request: dispatch to the workers, decrypt scores, decide.

This is the only place where scores are decrypted, through :mod:`veilface.crypto.secret`;
templates never reach the gateway. Both HTTP front ends (``/v1`` and the
CompreFace-compatible ``/api/v1``) call this class, so the logic exists once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import flask
import numpy as np
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from veilface import errors
from veilface.api.health import FORGED_ANSWERS
from veilface.api.ratelimit import Limits
from veilface.config import Settings
from veilface.crypto.codec import peek_dim
from veilface.crypto.layout import BlockLayout
from veilface.crypto.sealing import PayloadSealer
from veilface.crypto.secret import SecretContext
from veilface.messaging.app import send_signed
from veilface.messaging.messages import (
    EMBED_QUEUE,
    MATCH_QUEUE,
    TASK_COMPACT,
    TASK_ENROLL,
    TASK_PAIR,
    TASK_PROBE,
    TASK_SEARCH,
    EnrollRequest,
    EnrollResult,
    FaceBox,
    Probe,
    ProbeRequest,
    ScoreAnswer,
    SearchAnswer,
    SearchRequest,
    b64decode,
    b64encode,
    probe_digest,
    raise_for_error,
)
from veilface.messaging.signing import TaskSigner
from veilface.models.registry import ModelRegistry
from veilface.search import checks, ranking, routing
from veilface.search.checks import ShardPlan
from veilface.search.repository import block_refs
from veilface.search.results import ScoreResult
from veilface.store import galleries as store
from veilface.store.db import session_scope
from veilface.store.models import AuditEntry, Gallery
from veilface.store.presence import MATCHER, live_workers

log = logging.getLogger(__name__)

#: A request that carries a sealed image: :class:`EnrollRequest` or :class:`ProbeRequest`.
ImageRequest = TypeVar("ImageRequest", EnrollRequest, ProbeRequest)
#: Decrypted score vectors, each with the result it came from.
Decrypted = list[tuple[ScoreResult, np.ndarray]]
#: ``(block_no, slot)`` of every live template and its owner.
Owners = dict[tuple[int, int], store.SlotOwner]
#: The reason given for a face past ``max_faces_per_request`` usable ones: listed, not searched.
NOT_SEARCHED = "not_searched"


@dataclass(frozen=True)
class Candidate:
    subject: str
    similarity: float


@dataclass(frozen=True)
class IdentifiedFace:
    box: list[float]
    score: float
    candidates: list[Candidate]
    match: str | None
    quality_reason: str | None = None


@dataclass(frozen=True)
class FaceScore:
    """One face and its similarity to a reference, ``None`` when the face cannot be matched."""

    face: FaceBox
    similarity: float | None
    quality_reason: str | None = None


class Gateway:
    """The gateway's operations over the store, the queues and the key holder."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        celery: Celery,
        keys: SecretContext,
        sealer: PayloadSealer,
        signer: TaskSigner,
    ):
        self.settings = settings
        self.sessions = sessions
        self.celery = celery
        self.keys = keys
        self.sealer = sealer
        self.signer = signer
        self.registry = ModelRegistry(settings)
        self.limits = Limits.from_settings(settings)
        self._foreign_seen: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------

    def session(self):
        return session_scope(self.sessions)

    def _call(self, task: str, args: list, queue: str) -> Any:
        """Run a task and wait for it; a backend outage or a timeout becomes ``Unavailable``."""
        return self._wait(self._send(task, args, queue), task)

    def _send(self, task: str, args: list, queue: str) -> AsyncResult:
        """Queue a signed task; sending also subscribes to its result, so either backend may be down."""
        with self._unavailable_if_lost("the task broker is unreachable"):
            return send_signed(self.celery, self.signer, task, args, queue)

    def _wait(self, result: AsyncResult, task: str) -> Any:
        try:
            with self._unavailable_if_lost("the result backend is unreachable"):
                value = result.get(timeout=self.settings.task_timeout_s, propagate=False, interval=0.02)
        except CeleryTimeout as exc:
            raise errors.Unavailable(f"no worker answered {task} in time") from exc
        finally:
            try:
                result.forget()
            except Exception as exc:  # best effort while the backend is down: results expire anyway
                if not self._backend_lost(exc):
                    raise
        if isinstance(value, BaseException):
            log.warning("task %s failed: %s", task, type(value).__name__)
            raise errors.Unavailable(f"{task} failed in the worker; retry later")
        return raise_for_error(value)

    @contextlib.contextmanager
    def _unavailable_if_lost(self, message: str) -> Iterator[None]:
        """Turn an error that means a backend is unreachable (:meth:`_backend_lost`) into
        ``Unavailable``; any other error goes on as it is."""
        try:
            yield
        except Exception as exc:
            if not self._backend_lost(exc):
                raise
            raise errors.Unavailable(message) from exc

    def _backend_lost(self, exc: Exception) -> bool:
        """Whether ``exc`` says the broker or the result backend is unreachable.

        The Redis result backend's own list of connection errors counts too (it includes
        those of a socket left over from before a restart), and so does the bare
        ``RuntimeError`` with which Celery's result consumer gives up reconnecting, whether
        in ``get()``, ``forget()`` or the subscription ``send_task()`` makes; it reconnects
        on the next call.
        """
        lost = (BrokerError, RedisError, ConnectionError, OSError)
        lost += tuple(getattr(self.celery.backend, "connection_errors", ()))
        cause = exc.__cause__ if isinstance(exc, RuntimeError) else exc
        return isinstance(cause, lost)

    def _sealed(self, request: ImageRequest, image: bytes) -> ImageRequest:
        """``request`` carrying ``image``, sealed under the request's own binding."""
        return replace(request, sealed_image=b64encode(self.sealer.seal(image, request.binding())))

    def threshold(self, model_version: str) -> float:
        return self.registry.get(model_version).threshold

    # -- enrollment -------------------------------------------------------------------

    def enroll(self, gallery_name: str, subject_name: str, images: list[bytes], *, main_face: bool) -> dict:
        """Enroll every image for a subject (created on first use); all or nothing per image."""
        with self.session() as session:
            gallery = store.get_or_create_gallery(session, gallery_name)
            gallery_id, projection = gallery.id, gallery.projection
        active = self.registry.active().version
        results = []
        for img in images:
            request = EnrollRequest(
                gallery_id,
                subject_name,
                hashlib.sha256(img).hexdigest(),
                self.signer.expiry(),
                main_face,
                model_version=active,
                projection=projection,
            )
            message = self._sealed(request, img).to_message()
            results.append(EnrollResult.from_message(self._call(TASK_ENROLL, [message], EMBED_QUEUE)))
        self._maybe_compact(gallery_id, results[-1].model_version)
        return {
            "subject": subject_name,
            "enrolled": len(results),
            "template_ids": [r.template_id for r in results],
            "faces": [r.face.as_dict() for r in results],
            "model_version": results[-1].model_version,
        }

    def _maybe_compact(self, gallery_id: int, model_version: str) -> None:
        """Queue a compaction when the delta is full; the templates are stored already, so a
        backend failure here is logged, not returned (the next enrollment asks again)."""
        try:
            with self.session() as session:
                pending = store.delta_size(session, gallery_id, model_version)
            if pending >= self.settings.compaction_threshold:
                self.request_compaction(gallery_id, model_version)
        except (errors.Unavailable, DBAPIError, OSError) as exc:
            log.warning("compaction of gallery %d not queued: %s", gallery_id, type(exc).__name__)

    def request_compaction(self, gallery_id: int, model_version: str):
        """Queue a compaction of the gallery's delta (public keys only, on a matcher)."""
        return self._send(TASK_COMPACT, [gallery_id, model_version], MATCH_QUEUE)

    # -- search -----------------------------------------------------------------------

    def probes(
        self, image: bytes, *, as_template: bool = False, projection: str | None = None
    ) -> list[Probe]:
        """Detect every face of ``image`` and encrypt a probe for each usable one, the main face first.

        ``as_template`` encrypts each face in the template layout instead (slot 0), for a
        1:1 comparison of two photos; ``projection`` is the searched gallery's
        compact-template projection, if it has one.
        """
        request = ProbeRequest(
            hashlib.sha256(image).hexdigest(),
            self.signer.expiry(),
            as_template=as_template,
            model_version=self.registry.active().version,
            projection=projection,
        )
        faces = self._call(TASK_PROBE, [self._sealed(request, image).to_message()], EMBED_QUEUE)
        return [Probe.from_message(f) for f in faces]

    def _scatter(
        self, gallery_id: int, model_version: str, probes: list[str]
    ) -> tuple[list[Decrypted], Owners]:
        """Score ``probes`` (the faces of one image) on every shard, one message per shard, and
        decrypt the checked answers (a list per probe), with the owners of the live slots read
        after the answers came; any missing or refused shard fails the search.

        Each block number (its packed block and its delta) goes to one live matcher by
        rendezvous hashing, so a gallery is spread over all matchers and a new matcher
        takes over only its share. The gateway keeps that plan and decrypts only answers
        that fit it (:meth:`_checked_search`).
        """
        digests = tuple(probe_digest(b64decode(probe)) for probe in probes)
        dim = peek_dim(b64decode(probes[0]))
        with self.session() as session:
            block_nos = store.searchable_block_numbers(session, gallery_id, model_version)
            matchers = self._own_matchers(live_workers(session, MATCHER, self.settings.worker_ttl_s))
        if not block_nos:
            return [[] for _ in probes], {}
        if not matchers:
            raise errors.Unavailable("no he-matcher worker is online")
        queues = {w.name: w.queue for w in matchers}
        assignment = routing.assign(
            list(queues), block_nos, key=lambda b: f"{gallery_id}:{model_version}:{b}"
        )
        pending = []
        for name, blocks in assignment.items():
            if not blocks:
                continue
            request = SearchRequest(gallery_id, model_version, probes, blocks)
            plan = ShardPlan(name, dim, frozenset(blocks), digests)
            pending.append((plan, self._send(TASK_SEARCH, [request.to_message()], queues[name])))
        answers = [(plan, self._wait(result, TASK_SEARCH)) for plan, result in pending]
        return self._checked_search(gallery_id, model_version, len(probes), answers)

    def _checked_search(
        self, gallery_id: int, model_version: str, probes: int, answers: list[tuple[ShardPlan, Any]]
    ) -> tuple[list[Decrypted], Owners]:
        """Decrypt the matchers' answers to one search of ``probes`` probes (a list per probe),
        refusing all of them if one part of one answer fails a check.

        The slot counter, the block versions and the live templates are read after the answers
        came, so every template a matcher could have seen counts as allocated.
        """
        with self.session() as session:
            refs = block_refs(session, gallery_id, model_version)
            owners = store.slot_owners(session, gallery_id, model_version)
            state = checks.GalleryState.of(
                store.slots_allocated(session, gallery_id, model_version),
                {block_no: ref.version for block_no, ref in refs.items()},
                owners,
            )
        capacity = 2 * self.keys.slots
        decrypted: list[Decrypted] = [[] for _ in range(probes)]
        for plan, message in answers:
            with self._refusing_forgery(TASK_SEARCH, plan.worker, gallery_id):
                answer = SearchAnswer.from_message(message)
                if answer.worker != plan.worker:
                    raise checks.ForgedAnswer(f"answer signed {answer.worker[:64]!r} from its queue")
                checks.check_probe_parts(plan, [part.probe_sha256 for part in answer.probes])
                layout = BlockLayout(self.keys.slots, plan.dim)
                for part, found in zip(answer.probes, decrypted, strict=True):
                    checks.check_shard_answer(plan, part.scores, state, capacity)
                    for result in part.scores:
                        allowed, tolerance = checks.expected_lanes(result, state, capacity)
                        vector = self.keys.decrypt_scores(result.ciphertext, result.source)
                        what = f"block {result.block_no} ({result.source})"
                        checks.check_scores(layout, vector, allowed, tolerance, what)
                        found.append((result, vector))
        return decrypted, owners

    @contextlib.contextmanager
    def _refusing_forgery(self, task: str, worker: str, gallery_id: int | None = None) -> Iterator[None]:
        """Turn a failed check on a matcher's answer into ``Unavailable`` for the client, with an
        ERROR log line, a metric and an audit row naming the matcher (never a decrypted value)."""
        try:
            yield
        except (checks.ForgedAnswer, errors.BadRequest, errors.InvalidCiphertext) as exc:
            reason = exc.reason if isinstance(exc, checks.ForgedAnswer) else exc.message
            log.error("refused the answer of he-matcher %s to %s: %s", worker[:128], task, reason)
            FORGED_ANSWERS.labels(task=task).inc()
            self._audit_forgery(worker, gallery_id)
            raise errors.Unavailable(
                "a matcher returned scores that fail the gateway's checks; the answer was refused"
            ) from None

    def _audit_forgery(self, worker: str, gallery_id: int | None) -> None:
        """An audit row ``forged_scores``/``refused``; the subject column names the matcher."""
        api_key_id = flask.g.get("api_key_id") if flask.has_request_context() else None
        with self.session() as session:
            gallery = session.get(Gallery, gallery_id) if gallery_id is not None else None
            session.add(
                AuditEntry(
                    api_key_id=api_key_id,
                    action="forged_scores",
                    gallery=gallery.name if gallery else None,
                    subject=f"worker:{worker}"[:255],
                    outcome="refused",
                )
            )

    def _own_matchers(self, workers: list) -> list:
        """The matchers of this key set; a matcher of another one is never sent work (logged once)."""
        for w in workers:
            if w.key_fingerprint != self.keys.fingerprint and w.name not in self._foreign_seen:
                self._foreign_seen.add(w.name)
                log.error(
                    "ignoring he-matcher %s: its key set %s is not the gateway's %s",
                    w.name,
                    w.key_fingerprint[:12],
                    self.keys.fingerprint[:12],
                )
        return [w for w in workers if w.key_fingerprint == self.keys.fingerprint]

    def search(
        self,
        gallery_id: int,
        model_version: str,
        probes: list[str],
        top_k: int,
        subject_filter: str | None = None,
    ) -> list[list[Candidate]]:
        """Top-``top_k`` subjects for each encrypted probe (best template per subject), all
        probes in one batched search."""
        decrypted, owners = self._scatter(gallery_id, model_version, probes)
        live = {k: v.subject for k, v in owners.items() if subject_filter in (None, v.subject)}
        ranked = (ranking.top_k(found, live, top_k, self.keys.slots) for found in decrypted)
        return [[Candidate(subject, round(similarity, 6)) for subject, similarity in r] for r in ranked]

    def identify(
        self, gallery_name: str, image: bytes, *, top_k: int, threshold: float | None
    ) -> list[IdentifiedFace]:
        """Every face of ``image`` with its top candidates and the decision.

        At most ``max_faces_per_request`` usable faces are searched, the main face first, all in
        one batched search; the others are listed with no candidate and the reason :data:`NOT_SEARCHED`.
        """
        with self.session() as session:
            gallery = store.get_gallery(session, gallery_name)
            gallery_id, projection = gallery.id, gallery.projection
        faces = []
        probes = self.probes(image, projection=projection)
        found = iter(self._search_faces(gallery_id, probes, top_k))
        for probe, searched in zip(probes, self._searched(probes), strict=True):
            if not searched:
                faces.append(IdentifiedFace(*_box(probe), [], None, probe.quality_reason or NOT_SEARCHED))
                continue
            cut = self.threshold(probe.model_version) if threshold is None else threshold
            candidates = next(found)
            match = candidates[0].subject if candidates and candidates[0].similarity >= cut else None
            faces.append(IdentifiedFace(*_box(probe), candidates, match))
        return faces

    def _search_faces(self, gallery_id: int, probes: list[Probe], top_k: int) -> list[list[Candidate]]:
        """The candidates of each searched probe (:meth:`_searched`), in order, in one batched search.

        The probes of one image share their model version (the embedder makes them all with the
        version the gateway asked for).
        """
        batch = [probe for probe, searched in zip(probes, self._searched(probes), strict=True) if searched]
        if not batch:
            return []
        return self.search(gallery_id, batch[0].model_version, [p.ciphertext for p in batch], top_k)

    def _searched(self, probes: list[Probe]) -> list[bool]:
        """Which probes are searched: the usable ones, the first ``max_faces_per_request`` of them."""
        left = self.settings.max_faces_per_request or len(probes)
        searched = []
        for probe in probes:
            searched.append(probe.ciphertext is not None and left > 0)
            left -= searched[-1]
        return searched

    def verify_subject(self, gallery_name: str, subject_name: str, image: bytes) -> dict:
        """1:1 against an enrolled subject: the best of its templates under encryption."""
        with self.session() as session:
            gallery = store.get_gallery(session, gallery_name)
            store.get_subject(session, gallery, subject_name)
            gallery_id, projection = gallery.id, gallery.projection
        probe = self._single_probe(image, projection=projection)
        (candidates,) = self.search(gallery_id, probe.model_version, [probe.ciphertext], 1, subject_name)
        if not candidates:
            raise errors.UnknownSubject(
                f"subject {subject_name!r} has no template made by model {probe.model_version}"
            )
        return self._decision(candidates[0].similarity, probe.model_version)

    def verify_pair(self, image1: bytes, image2: bytes) -> dict:
        """1:1 between two photos; the similarity is computed under encryption too."""
        first, second = self._single_probe(image1), self._single_probe(image2, as_template=True)
        return self._decision(self._pair_similarity(first, second), first.model_version)

    def _pair_similarity(self, probe: Probe, template: Probe) -> float:
        """Similarity of a probe and a template-layout ciphertext, scored by a matcher."""
        message = self._call(TASK_PAIR, [probe.ciphertext, template.ciphertext], MATCH_QUEUE)
        dim = peek_dim(b64decode(probe.ciphertext))
        worker = message.get("worker") if isinstance(message, dict) else None
        with self._refusing_forgery(TASK_PAIR, worker if isinstance(worker, str) else "(unnamed)"):
            answer = ScoreAnswer.from_message(message)
            checks.check_pair_answer(list(answer.scores), dim)
            (result,) = answer.scores
            vector = self.keys.decrypt_scores(result.ciphertext, result.source)
            layout = BlockLayout(self.keys.slots, dim)
            checks.check_scores(layout, vector, np.array([0]), checks.noise_tolerance(0), "pair")
        decrypted = [(result, vector)]
        ((_, similarity),) = ranking.top_k(decrypted, {(0, 0): "pair"}, 1, self.keys.slots)
        return round(similarity, 6)

    def _single_probe(
        self, image: bytes, *, as_template: bool = False, projection: str | None = None
    ) -> Probe:
        probes = self.probes(image, as_template=as_template, projection=projection)
        if not probes:
            raise errors.NoFace()
        main = probes[0]  # the embedder lists the main face first
        if main.ciphertext is None:
            raise errors.PoorQuality(main.quality_reason)
        return main

    def _decision(self, similarity: float, model_version: str) -> dict:
        cut = self.threshold(model_version)
        return {"match": similarity >= cut, "similarity": round(similarity, 6), "threshold": cut}

    # -- face-level helpers for the CompreFace-compatible API (/api/v1) -----------------
    # Added for veilface.api.compreface; they reuse the probe, scatter and pair paths above.

    def detect(self, image: bytes) -> list[FaceBox]:
        """Every face the embedder finds in ``image`` (it also encrypts probes, discarded here)."""
        return [probe.face for probe in self.probes(image)]

    def verify_template(self, gallery_name: str, template_id: int, image: bytes) -> list[FaceScore]:
        """Every face of ``image`` scored against one enrolled template, under encryption."""
        with self.session() as session:
            gallery = store.get_gallery(session, gallery_name)
            template, _subject = store.get_live_template(session, gallery, template_id)
            gallery_id, version, slot = gallery.id, template.model_version, (template.block_no, template.slot)
        scored = []
        probes = self.probes(image)
        batch = [probe for probe, searched in zip(probes, self._searched(probes), strict=True) if searched]
        for probe in batch:
            if probe.model_version != version:
                raise errors.Conflict(
                    f"template {template_id} was made by model {version}, probes by {probe.model_version}; "
                    "re-enroll the subject"
                )
        similarities = iter(self._slot_similarities(gallery_id, version, [p.ciphertext for p in batch], slot))
        for probe, searched in zip(probes, self._searched(probes), strict=True):
            if not searched:
                scored.append(FaceScore(probe.face, None, probe.quality_reason or NOT_SEARCHED))
                continue
            scored.append(FaceScore(probe.face, next(similarities)))
        return scored

    def _slot_similarities(
        self, gallery_id: int, version: str, probes: list[str], slot: tuple[int, int]
    ) -> list[float]:
        """Decrypted similarity of each of ``probes`` to the template in ``(block_no, slot)``, in
        one batched search."""
        if not probes:
            return []
        decrypted, _ = self._scatter(gallery_id, version, probes)
        similarities = []
        for found in decrypted:
            ranked = ranking.top_k(found, {slot: "template"}, 1, self.keys.slots)
            if not ranked:
                raise errors.NotFound("the template was deleted while it was being compared")
            similarities.append(ranked[0][1])
        return similarities

    def compare(self, source: bytes, target: bytes) -> tuple[FaceBox, list[FaceScore]]:
        """The main face of ``source`` against every face of ``target``, under encryption."""
        first = self._single_probe(source)
        scored = []
        for face in self.probes(target, as_template=True):
            if face.ciphertext is None:
                scored.append(FaceScore(face.face, None, face.quality_reason))
                continue
            scored.append(FaceScore(face.face, self._pair_similarity(first, face)))
        return first.face, scored


def _box(probe: Probe) -> tuple[list[float], float]:
    face = probe.face.as_dict()
    return face["box"], face["score"]
