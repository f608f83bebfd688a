"""What the gateway does for a request: dispatch to the workers, decrypt scores, decide.

This is the only place where scores are decrypted, through :mod:`veilface.crypto.secret`;
templates never reach the gateway. Both HTTP front ends (``/v1`` and the
CompreFace-compatible ``/api/v1``) call this class, so the logic exists once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.orm import Session, sessionmaker

from veilface import errors, sharding
from veilface.config import Settings
from veilface.crypto.secret import SecretContext
from veilface.api.ratelimit import RateLimiter
from veilface.payload import PayloadSealer
from veilface.registry import ModelRegistry
from veilface.schemas import (
    EMBED_QUEUE,
    MATCH_QUEUE,
    TASK_COMPACT,
    TASK_ENROLL,
    TASK_PAIR,
    TASK_PROBE,
    TASK_SEARCH,
    BlockRef,
    EnrollResult,
    Probe,
    ScoreCiphertext,
    SearchRequest,
    b64decode,
    b64encode,
    raise_for_error,
)
from veilface.search.ranking import rank_candidates
from veilface.store import galleries as store
from veilface.store.db import session_scope
from veilface.workers import MATCHER, live_workers

log = logging.getLogger(__name__)


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


class Gateway:
    """The gateway's operations over the store, the queues and the key holder."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        celery: Celery,
        keys: SecretContext,
        sealer: PayloadSealer,
    ):
        self.settings = settings
        self.sessions = sessions
        self.celery = celery
        self.keys = keys
        self.sealer = sealer
        self.registry = ModelRegistry(settings)
        self.rate_limiter = RateLimiter(settings.rate_limit_per_minute)

    # -- plumbing ---------------------------------------------------------------------

    def session(self):
        return session_scope(self.sessions)

    def _call(self, task: str, args: list, queue: str) -> Any:
        """Run a task and wait for it; a broker outage or a timeout becomes ``Unavailable``."""
        try:
            result = self.celery.send_task(task, args=args, queue=queue)
        except BrokerError as exc:
            raise errors.Unavailable("the task broker is unreachable") from exc
        return self._wait(result, task)

    def _wait(self, result, task: str) -> Any:
        try:
            value = result.get(timeout=self.settings.task_timeout_s, propagate=False, interval=0.02)
        except CeleryTimeout as exc:
            raise errors.Unavailable(f"no worker answered {task} in time") from exc
        except (BrokerError, ConnectionError, OSError) as exc:
            raise errors.Unavailable("the result backend is unreachable") from exc
        finally:
            result.forget()
        if isinstance(value, BaseException):
            log.warning("task %s failed: %s", task, type(value).__name__)
            raise errors.Unavailable(f"{task} failed in the worker; retry later")
        return raise_for_error(value)

    def _sealed(self, image: bytes) -> str:
        return b64encode(self.sealer.seal(image))

    def threshold(self, model_version: str) -> float:
        return self.registry.get(model_version).threshold

    # -- enrollment -------------------------------------------------------------------

    def enroll(self, gallery_name: str, subject_name: str, images: list[bytes], *, largest: bool) -> dict:
        """Enroll every image for a subject (created on first use); all or nothing per image."""
        with self.session() as session:
            gallery = store.get_or_create_gallery(session, gallery_name)
            subject = store.get_or_create_subject(session, gallery, subject_name)
            gallery_id, subject_id = gallery.id, subject.id
        results = [
            EnrollResult.from_message(
                self._call(
                    TASK_ENROLL,
                    [gallery_id, subject_id, hashlib.sha256(img).hexdigest(), self._sealed(img), largest],
                    EMBED_QUEUE,
                )
            )
            for img in images
        ]
        self._maybe_compact(gallery_id, results[-1].model_version)
        return {
            "subject": subject_name,
            "enrolled": len(results),
            "template_ids": [r.template_id for r in results],
            "faces": [r.face.as_dict() for r in results],
            "model_version": results[-1].model_version,
        }

    def _maybe_compact(self, gallery_id: int, model_version: str) -> None:
        with self.session() as session:
            pending = store.delta_size(session, gallery_id, model_version)
        if pending >= self.settings.compaction_threshold:
            self.request_compaction(gallery_id, model_version)

    def request_compaction(self, gallery_id: int, model_version: str):
        """Queue a compaction of the gallery's delta (public keys only, on a matcher)."""
        return self.celery.send_task(TASK_COMPACT, args=[gallery_id, model_version], queue=MATCH_QUEUE)

    # -- search -----------------------------------------------------------------------

    def probes(self, image: bytes) -> list[Probe]:
        """Detect every face of ``image`` and encrypt a probe for each usable one."""
        faces = self._call(TASK_PROBE, [self._sealed(image)], EMBED_QUEUE)
        return [Probe.from_message(f) for f in faces]

    def _scatter(self, gallery_id: int, model_version: str, probe: str) -> list[ScoreCiphertext]:
        """Score ``probe`` on every shard; any missing shard makes the whole search fail."""
        with self.session() as session:
            blocks = {b.block_no: b.version for b in store.live_blocks(session, gallery_id, model_version)}
            has_delta = store.delta_size(session, gallery_id, model_version) > 0
            matchers = [
                w
                for w in live_workers(session, MATCHER, self.settings.worker_ttl_s)
                if w.key_fingerprint == self.keys.fingerprint
            ]
        if not blocks and not has_delta:
            return []
        if not matchers:
            raise errors.Unavailable("no he-matcher worker is online")
        names = [w.name for w in matchers]
        queues = {w.name: w.queue for w in matchers}
        plan = sharding.assign(names, [sharding_key(gallery_id, model_version, b) for b in blocks])
        delta_owner = sharding.owner(names, sharding_key(gallery_id, model_version, "delta"))
        pending = []
        for name in names:
            refs = [BlockRef(int(key.rsplit(":", 1)[1]), 0) for key in plan[name]]
            refs = [BlockRef(r.block_no, blocks[r.block_no]) for r in refs]
            with_delta = has_delta and name == delta_owner
            if not refs and not with_delta:
                continue
            request = SearchRequest(gallery_id, model_version, probe, refs, with_delta)
            try:
                pending.append(
                    self.celery.send_task(TASK_SEARCH, args=[request.to_message()], queue=queues[name])
                )
            except BrokerError as exc:
                raise errors.Unavailable("the task broker is unreachable") from exc
        scores: list[ScoreCiphertext] = []
        for result in pending:
            scores.extend(ScoreCiphertext.from_message(m) for m in self._wait(result, TASK_SEARCH))
        return scores

    def search(
        self, gallery_id: int, model_version: str, probe: str, top_k: int, subject_filter: str | None = None
    ) -> list[Candidate]:
        """Top-``top_k`` subjects for an encrypted probe (best template per subject)."""
        scores = self._scatter(gallery_id, model_version, probe)
        with self.session() as session:
            owners = store.slot_owners(session, gallery_id, model_version)
        if subject_filter is not None:
            owners = {k: v for k, v in owners.items() if v.subject == subject_filter}
        decrypted = [(s.block_no, s.slots, self.keys.decrypt_scores(b64decode(s.ciphertext))) for s in scores]
        ranked = rank_candidates(decrypted, {k: v.subject for k, v in owners.items()}, top_k)
        return [Candidate(subject, similarity) for subject, similarity in ranked]

    def identify(
        self, gallery_name: str, image: bytes, *, top_k: int, threshold: float | None
    ) -> list[IdentifiedFace]:
        """Every face of ``image`` with its top candidates and the decision."""
        with self.session() as session:
            gallery_id = store.get_gallery(session, gallery_name).id
        faces = []
        for probe in self.probes(image):
            if probe.ciphertext is None:
                faces.append(IdentifiedFace(*_box(probe), [], None, probe.quality_reason))
                continue
            cut = self.threshold(probe.model_version) if threshold is None else threshold
            candidates = self.search(gallery_id, probe.model_version, probe.ciphertext, top_k)
            match = candidates[0].subject if candidates and candidates[0].similarity >= cut else None
            faces.append(IdentifiedFace(*_box(probe), candidates, match))
        return faces

    def verify_subject(self, gallery_name: str, subject_name: str, image: bytes) -> dict:
        """1:1 against an enrolled subject: the best of its templates under encryption."""
        with self.session() as session:
            gallery = store.get_gallery(session, gallery_name)
            store.get_subject(session, gallery, subject_name)
            gallery_id = gallery.id
        probe = self._single_probe(image)
        candidates = self.search(gallery_id, probe.model_version, probe.ciphertext, 1, subject_name)
        if not candidates:
            raise errors.UnknownSubject(
                f"subject {subject_name!r} has no template made by model {probe.model_version}"
            )
        return self._decision(candidates[0].similarity, probe.model_version)

    def verify_pair(self, image1: bytes, image2: bytes) -> dict:
        """1:1 between two photos; the similarity is computed under encryption too."""
        first, second = self._single_probe(image1), self._single_probe(image2)
        result = self._call(TASK_PAIR, [first.ciphertext, second.ciphertext], MATCH_QUEUE)
        similarity = self.keys.decrypt_pair_score(b64decode(result["ciphertext"]))
        return self._decision(similarity, first.model_version)

    def _single_probe(self, image: bytes) -> Probe:
        probes = self.probes(image)
        if not probes:
            raise errors.NoFace()
        best = max(probes, key=lambda p: p.face.box[2] * p.face.box[3])
        if best.ciphertext is None:
            raise errors.PoorQuality(best.quality_reason)
        return best

    def _decision(self, similarity: float, model_version: str) -> dict:
        cut = self.threshold(model_version)
        return {"match": similarity >= cut, "similarity": round(similarity, 6), "threshold": cut}


def sharding_key(gallery_id: int, model_version: str, block: int | str) -> str:
    return f"{gallery_id}:{model_version}:{block}"


def _box(probe: Probe) -> tuple[list[float], float]:
    face = probe.face.as_dict()
    return face["box"], face["score"]

