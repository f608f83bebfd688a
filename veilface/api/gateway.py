"""What the gateway does for a request: dispatch to the workers, decrypt scores, decide.

This is the only place where scores are decrypted, through :mod:`veilface.crypto.secret`;
templates never reach the gateway. A gallery with keys of its own is searched with its key set
(sent to the workers as ``key_set``) and decrypted with its secret key (:class:`GalleryKeys`). Both
HTTP front ends (``/v1`` and the CompreFace-compatible ``/api/v1``) call this class, so the logic
exists once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import flask
import numpy as np
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from veilface import errors
from veilface.api.client_galleries import ClientGalleries
from veilface.api.health import FORGED_ANSWERS
from veilface.api.ratelimit import Limits
from veilface.api.transport import TaskTransport
from veilface.config import Settings
from veilface.crypto.codec import peek_dim
from veilface.crypto.layout import BlockLayout
from veilface.crypto.params import CkksParams
from veilface.crypto.secret import GalleryKeyring, SecretContext
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
    probe_digest,
)
from veilface.models.registry import ModelRegistry
from veilface.search import checks, ranking, routing
from veilface.search import sentinels as sentinel_checks
from veilface.search.checks import ShardPlan
from veilface.search.repository import block_refs
from veilface.search.results import ScoreResult
from veilface.store import galleries as store
from veilface.store.db import session_scope
from veilface.store.keysets import PublicContexts
from veilface.store.models import AuditEntry, Gallery
from veilface.store.presence import MATCHER, live_workers
from veilface.store.sentinels import SentinelKeeper, live_positions

log = logging.getLogger(__name__)

#: Decrypted score vectors, each with the result it came from.
Decrypted = list[tuple[ScoreResult, np.ndarray]]
#: ``(block_no, slot)`` of every live template and its owner.
Owners = dict[tuple[int, int], store.SlotOwner]
#: ``(block_no, slot) -> true score`` of the sentinels of a gallery against one probe.
Expected = Mapping[tuple[int, int], float]
#: The reason given for a face past ``max_faces_per_request`` usable ones: listed, not searched.
NOT_SEARCHED = "not_searched"


@dataclass(frozen=True)
class GalleryKeys:
    """The keys of one gallery: ``key_set``, the fingerprint the workers encrypt and score with
    (``None``: the deployment's), and ``secret``, the gateway's key that decrypts its scores."""

    key_set: str | None
    secret: SecretContext


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
    """The gateway's operations over the store, the workers (through ``transport``) and the key holder."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        keys: SecretContext,
        transport: TaskTransport,
        keyring: GalleryKeyring | None = None,
    ):
        self.settings = settings
        self.sessions = sessions
        self.keys = keys
        self.transport = transport
        #: The secret keys of galleries with keys of their own (``{keys_path}/galleries``).
        self.keyring = keyring or GalleryKeyring(settings.gallery_keys_path)
        self.registry = ModelRegistry(settings)
        self.limits = Limits.from_settings(settings)
        #: The public key sets of galleries with keys of their own or of their client's.
        self.public_contexts = PublicContexts(sessions)
        self.sentinel_keeper = SentinelKeeper.from_settings(settings, self.public_contexts)
        #: The operations on client-key galleries (ciphertexts in, ciphertexts out).
        self.clients = ClientGalleries(self)
        self._foreign_seen: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------

    def session(self):
        """A transaction on the store (committed on success)."""
        return session_scope(self.sessions)

    def threshold(self, model_version: str) -> float:
        return self.registry.get(model_version).threshold

    @functools.cached_property
    def params(self) -> CkksParams:
        """The deployment's CKKS parameters, which every gallery's key set has too."""
        return self.sentinel_keeper.context_for(None).params

    @property
    def deployment_keys(self) -> GalleryKeys:
        """The deployment's keys: those of every gallery in deployment mode, and of 1:1 photo pairs."""
        return GalleryKeys(None, self.keys)

    def keys_of(self, gallery: Gallery) -> GalleryKeys:
        """The keys that encrypt ``gallery`` and decrypt its scores.

        :class:`~veilface.errors.KeyMismatch` if its secret key file is gone (destroyed by another
        gateway process); :class:`~veilface.errors.ClientKeyGallery` if the client holds it.
        """
        if gallery.key_mode == "deployment":
            return self.deployment_keys
        if gallery.key_mode == "client":
            raise errors.ClientKeyGallery(
                f"gallery {gallery.name!r} is encrypted under its client's key: the server cannot read "
                "its scores, so it cannot decide a match (search it through the client)"
            )
        return GalleryKeys(gallery.key_fingerprint, self.keyring.get(gallery.key_fingerprint))

    # -- enrollment -------------------------------------------------------------------

    def enroll(self, gallery_name: str, subject_name: str, images: list[bytes], *, main_face: bool) -> dict:
        """Enroll every image for a subject (created on first use); all or nothing per image."""
        with self.session() as session:
            gallery = store.get_or_create_gallery(session, gallery_name)
            gallery_id, projection, key_set = gallery.id, gallery.projection, self.keys_of(gallery).key_set
        active = self.registry.active().version
        results = []
        for img in images:
            self._top_up_sentinels(gallery_id, active, key_set)
            request = EnrollRequest(
                gallery_id,
                subject_name,
                hashlib.sha256(img).hexdigest(),
                self.transport.expiry(),
                main_face,
                model_version=active,
                projection=projection,
                key_set=key_set,
            )
            message = self.transport.sealed(request, img).to_message()
            results.append(
                EnrollResult.from_message(self.transport.call(TASK_ENROLL, [message], EMBED_QUEUE))
            )
        self._top_up_sentinels(gallery_id, results[-1].model_version, key_set)
        self.maybe_compact(gallery_id, results[-1].model_version, key_set)
        return {
            "subject": subject_name,
            "enrolled": len(results),
            "template_ids": [r.template_id for r in results],
            "faces": [r.face.as_dict() for r in results],
            "model_version": results[-1].model_version,
        }

    def _top_up_sentinels(self, gallery_id: int, model_version: str, key_set: str | None) -> None:
        """Add the sentinels due at the gallery's next positions (before and after each enrollment,
        so a sentinel may come on either side of a face), under the gallery's key set ``key_set``;
        a failure is logged, not returned."""
        try:
            with self.session() as session:
                self.sentinel_keeper.top_up(session, gallery_id, model_version, key_set)
        except (DBAPIError, OSError, errors.KeyMismatch) as exc:
            log.warning("sentinels of gallery %d not added: %s", gallery_id, type(exc).__name__)

    def maybe_compact(self, gallery_id: int, model_version: str, key_set: str | None) -> None:
        """Queue a compaction when the delta is full; the templates are stored already, so a
        backend failure here is logged, not returned (the next enrollment asks again)."""
        try:
            with self.session() as session:
                pending = store.delta_size(session, gallery_id, model_version)
            if pending >= self.settings.compaction_threshold:
                self.request_compaction(gallery_id, model_version, key_set)
        except (errors.Unavailable, DBAPIError, OSError) as exc:
            log.warning("compaction of gallery %d not queued: %s", gallery_id, type(exc).__name__)

    def request_compaction(self, gallery_id: int, model_version: str, key_set: str | None):
        """Queue a compaction of the gallery's delta (public keys of ``key_set`` only, on a matcher)."""
        return self.transport.send(TASK_COMPACT, [gallery_id, model_version, key_set], MATCH_QUEUE)

    # -- search -----------------------------------------------------------------------

    def probes(
        self,
        image: bytes,
        *,
        as_template: bool = False,
        projection: str | None = None,
        sentinels: Sequence[sentinel_checks.SentinelRef] = (),
        key_set: str | None = None,
    ) -> list[Probe]:
        """Detect every face of ``image`` and encrypt a probe for each usable one, the main face first.

        ``as_template`` encrypts each face in the template layout instead (slot 0), for a
        1:1 comparison of two photos; ``projection`` is the searched gallery's
        compact-template projection, if it has one; each probe carries back the sealed true
        scores of ``sentinels`` (:meth:`watched_probes`); ``key_set`` is its key set (``None``: the
        deployment's).
        """
        request = ProbeRequest(
            hashlib.sha256(image).hexdigest(),
            self.transport.expiry(),
            as_template=as_template,
            model_version=self.registry.active().version,
            projection=projection,
            key_set=key_set,
        )
        request = self.transport.sealed(request, image)
        seeds = [ref.seed for ref in sentinels]
        sealed_seeds = sentinel_checks.seal_seeds(self.transport.sealer, request.binding(), seeds)
        request = replace(request, sealed_sentinels=sealed_seeds)
        faces = self.transport.call(TASK_PROBE, [request.to_message()], EMBED_QUEUE)
        return [Probe.from_message(f) for f in faces]

    def watched_probes(
        self, gallery_id: int, image: bytes, projection: str | None, key_set: str | None
    ) -> tuple[list[Probe], list[Expected]]:
        """The probes of ``image`` for a search of the gallery (under its key set ``key_set``), and
        for each (by probe index) the true scores of the gallery's sentinels, which the embedder
        computed and sealed."""
        with self.session() as session:
            refs = self.sentinel_keeper.roster(session, gallery_id, self.registry.active().version)
        probes = self.probes(image, projection=projection, sentinels=refs, key_set=key_set)
        return probes, sentinel_checks.expected_per_probe(self.transport.sealer, probes, refs)

    def _scatter(
        self,
        gallery_id: int,
        model_version: str,
        probes: list[str],
        keys: GalleryKeys,
        sentinels: Sequence[Expected] | None = None,
    ) -> tuple[list[Decrypted], Owners]:
        """Score ``probes`` (the faces of one image) on every shard and decrypt the checked answers
        (a list per probe), with the owners of the live slots read after the answers came; any
        missing or refused shard fails the search. ``sentinels[i]`` are the true scores of the
        gallery's sentinels for probe ``i`` (:meth:`watched_probes`)."""
        answers = self._send_search(gallery_id, model_version, probes, keys.key_set)
        expected = list(sentinels) if sentinels is not None else [{} for _ in probes]
        return self._checked_search(gallery_id, model_version, keys.secret, expected, answers)

    def unread_search(
        self, gallery_id: int, model_version: str, probes: list[str], key_set: str
    ) -> tuple[list[list[ScoreResult]], Owners]:
        """Score the probes of a client-key gallery (its key set ``key_set``) on every shard: the
        score ciphertexts of each probe, unread, and the owners of the live slots.

        The gateway holds no key to decrypt them, so the answers get the checks that need none
        (:meth:`_shaped_answer`); the client checks each score's level and scale before its key
        touches it (:mod:`veilface.client.scores`).
        """
        answers = self._send_search(gallery_id, model_version, probes, key_set)
        state, owners = self._gallery_state(gallery_id, model_version)
        found: list[list[ScoreResult]] = [[] for _ in probes]
        for plan, message in answers:
            with self._refusing_forgery(TASK_SEARCH, plan.worker, gallery_id):
                answer = self._shaped_answer(plan, message, state)
                for part, index in zip(answer.probes, plan.probe_indices, strict=True):
                    found[index].extend(part.scores)
        return found, owners

    def _send_search(
        self, gallery_id: int, model_version: str, probes: list[str], key_set: str | None
    ) -> list[tuple[ShardPlan, Any]]:
        """Send one search message per shard and wait for every answer, each with its plan.

        Each block number (its packed block and its delta) goes to one live matcher by
        rendezvous hashing, so a gallery is spread over all matchers and a new matcher
        takes over only its share; the probes of a gallery that one matcher holds whole are
        dealt over it and the idle matchers (:func:`veilface.search.routing.spread_probes`).
        The gateway keeps that plan and accepts only answers that fit it (:meth:`_shaped_answer`).
        """
        digests = tuple(probe_digest(b64decode(probe)) for probe in probes)
        dim = peek_dim(b64decode(probes[0]))
        with self.session() as session:
            block_nos = store.searchable_block_numbers(session, gallery_id, model_version)
            matchers = self._own_matchers(live_workers(session, MATCHER, self.settings.worker_ttl_s))
        if not block_nos:
            return []
        if not matchers:
            raise errors.Unavailable("no he-matcher worker is online")
        queues = {w.name: w.queue for w in matchers}
        assignment = routing.assign(
            list(queues), block_nos, key=lambda b: f"{gallery_id}:{model_version}:{b}"
        )
        pending = []
        for name, blocks, indices in routing.spread_probes(assignment, len(probes), f"{gallery_id}"):
            sent = [probes[i] for i in indices]
            request = SearchRequest(gallery_id, model_version, sent, blocks, key_set)
            plan = ShardPlan(name, dim, frozenset(blocks), tuple(digests[i] for i in indices), indices)
            pending.append((plan, self.transport.send(TASK_SEARCH, [request.to_message()], queues[name])))
        return [(plan, self.transport.wait(result, TASK_SEARCH)) for plan, result in pending]

    def _gallery_state(self, gallery_id: int, model_version: str) -> tuple[checks.GalleryState, Owners]:
        """The slot counter, block versions and live templates of the gallery, read after the
        answers came (so every template a matcher could have seen counts as allocated), and the
        owners of the live slots."""
        with self.session() as session:
            refs = block_refs(session, gallery_id, model_version)
            owners = store.slot_owners(session, gallery_id, model_version)
            state = checks.GalleryState.of(
                store.slots_allocated(session, gallery_id, model_version),
                {block_no: ref.version for block_no, ref in refs.items()},
                owners,
            )
        return state, owners

    def _shaped_answer(self, plan: ShardPlan, message: Any, state: checks.GalleryState) -> SearchAnswer:
        """The answer of ``plan.worker`` once it passed the checks that need no key: signed by the
        matcher asked, one part per probe sent, each covering exactly the planned blocks with
        allocated slots (:func:`veilface.search.checks.check_shard_answer`)."""
        answer = SearchAnswer.from_message(message)
        if answer.worker != plan.worker:
            raise checks.ForgedAnswer(f"answer signed {answer.worker[:64]!r} from its queue")
        checks.check_probe_parts(plan, [part.probe_sha256 for part in answer.probes])
        for part in answer.probes:
            checks.check_shard_answer(plan, part.scores, state, self.params.block_capacity)
        return answer

    def _checked_search(
        self,
        gallery_id: int,
        model_version: str,
        secret: SecretContext,
        sentinels: Sequence[Expected],
        answers: list[tuple[ShardPlan, Any]],
    ) -> tuple[list[Decrypted], Owners]:
        """Decrypt the matchers' answers to one search of ``len(sentinels)`` probes (a list per
        probe), refusing all of them if one part of one answer fails a check.

        Every answer is shaped as planned (:meth:`_shaped_answer`); once decrypted, every lane
        that can hold no score is near zero, and each sentinel listed before the search was sent
        and still there scored its true score (:func:`veilface.search.sentinels.check_sentinels`).
        """
        state, owners = self._gallery_state(gallery_id, model_version)
        with self.session() as session:
            live = live_positions(session, gallery_id, model_version)
        capacity = self.params.block_capacity
        decrypted: list[Decrypted] = [[] for _ in sentinels]
        for plan, message in answers:
            with self._refusing_forgery(TASK_SEARCH, plan.worker, gallery_id):
                answer = self._shaped_answer(plan, message, state)
                layout = BlockLayout(secret.slots, plan.dim)
                for part, index in zip(answer.probes, plan.probe_indices, strict=True):
                    found, expected = decrypted[index], sentinels[index]
                    shard, tolerances = [], {}
                    for result in part.scores:
                        allowed, tolerance = checks.expected_lanes(result, state, capacity)
                        vector = secret.decrypt_scores(result.ciphertext, result.source)
                        what = f"block {result.block_no} ({result.source})"
                        checks.check_scores(layout, vector, allowed, tolerance, what)
                        shard.append((result, vector))
                        tolerances[result.block_no, result.source] = tolerance
                    mine = {at: v for at, v in expected.items() if at in live and at[0] in plan.blocks}
                    sentinel_checks.check_sentinels(shard, mine, tolerances, secret.slots)
                    found.extend(shard)
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
        keys: GalleryKeys,
        subject_filter: str | None = None,
        sentinels: Sequence[Expected] | None = None,
    ) -> list[list[Candidate]]:
        """Top-``top_k`` subjects for each encrypted probe (best template per subject), all
        probes in one batched search of a gallery of ``keys``; ``sentinels[i]`` are the true
        scores of the gallery's sentinels for probe ``i`` (:meth:`watched_probes`)."""
        decrypted, owners = self._scatter(gallery_id, model_version, probes, keys, sentinels)
        live = {k: v.subject for k, v in owners.items() if subject_filter in (None, v.subject)}
        ranked = (ranking.top_k(found, live, top_k, keys.secret.slots) for found in decrypted)
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
            gallery_id, projection, keys = gallery.id, gallery.projection, self.keys_of(gallery)
        faces = []
        probes, expected = self.watched_probes(gallery_id, image, projection, keys.key_set)
        found = iter(self._search_faces(gallery_id, keys, probes, expected, top_k))
        for probe, searched in zip(probes, self._searched(probes), strict=True):
            if not searched:
                faces.append(IdentifiedFace(*_box(probe), [], None, probe.quality_reason or NOT_SEARCHED))
                continue
            cut = self.threshold(probe.model_version) if threshold is None else threshold
            candidates = next(found)
            match = candidates[0].subject if candidates and candidates[0].similarity >= cut else None
            faces.append(IdentifiedFace(*_box(probe), candidates, match))
        return faces

    def _search_faces(
        self, gallery_id: int, keys: GalleryKeys, probes: list[Probe], expected: list[Expected], top_k: int
    ) -> list[list[Candidate]]:
        """The candidates of each searched probe (:meth:`_searched`), in order, in one batched search.

        The probes of one image share their model version (the embedder makes them all with the
        version the gateway asked for); ``expected[i]`` are probe ``i``'s true sentinel scores.
        """
        batch, sentinels = _searched_batch(probes, expected, self._searched(probes))
        if not batch:
            return []
        ciphertexts = [p.ciphertext for p in batch]
        return self.search(gallery_id, batch[0].model_version, ciphertexts, top_k, keys, sentinels=sentinels)

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
            gallery_id, projection, keys = gallery.id, gallery.projection, self.keys_of(gallery)
        probes, expected = self.watched_probes(gallery_id, image, projection, keys.key_set)
        probe = _main_probe(probes)
        (candidates,) = self.search(
            gallery_id, probe.model_version, [probe.ciphertext], 1, keys, subject_name, [expected[0]]
        )
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
        """Similarity of a probe and a template-layout ciphertext (under the deployment's keys: two
        photos, no gallery), scored by a matcher."""
        args = [probe.ciphertext, template.ciphertext, self.deployment_keys.key_set]
        message = self.transport.call(TASK_PAIR, args, MATCH_QUEUE)
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
        return _main_probe(self.probes(image, as_template=as_template, projection=projection))

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
            keys = self.keys_of(gallery)
        scored = []
        probes, expected = self.watched_probes(gallery_id, image, None, keys.key_set)
        searched = self._searched(probes)
        batch, sentinels = _searched_batch(probes, expected, searched)
        for probe in batch:
            if probe.model_version != version:
                raise errors.Conflict(
                    f"template {template_id} was made by model {version}, probes by {probe.model_version}; "
                    "re-enroll the subject"
                )
        ciphertexts = [p.ciphertext for p in batch]
        similarities = iter(self._slot_similarities(gallery_id, version, keys, ciphertexts, slot, sentinels))
        for probe, was_searched in zip(probes, searched, strict=True):
            if not was_searched:
                scored.append(FaceScore(probe.face, None, probe.quality_reason or NOT_SEARCHED))
                continue
            scored.append(FaceScore(probe.face, next(similarities)))
        return scored

    def _slot_similarities(
        self,
        gallery_id: int,
        version: str,
        keys: GalleryKeys,
        probes: list[str],
        slot: tuple[int, int],
        sentinels: Sequence[Expected],
    ) -> list[float]:
        """Decrypted similarity of each of ``probes`` to the template in ``(block_no, slot)``, in
        one batched search."""
        if not probes:
            return []
        decrypted, _ = self._scatter(gallery_id, version, probes, keys, sentinels)
        similarities = []
        for found in decrypted:
            ranked = ranking.top_k(found, {slot: "template"}, 1, keys.secret.slots)
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


def _searched_batch(
    probes: list[Probe], expected: list[Expected], searched: list[bool]
) -> tuple[list[Probe], list[Expected]]:
    """The searched probes (:meth:`Gateway._searched`) and their sentinels' true scores, in order."""
    chosen = [(probe, e) for probe, e, s in zip(probes, expected, searched, strict=True) if s]
    return [probe for probe, _ in chosen], [e for _, e in chosen]


def _main_probe(probes: list[Probe]) -> Probe:
    """The main face's probe (the embedder lists it first); ``NoFace`` or ``PoorQuality`` if none."""
    if not probes:
        raise errors.NoFace()
    main = probes[0]
    if main.ciphertext is None:
        raise errors.PoorQuality(main.quality_reason)
    return main


def _box(probe: Probe) -> tuple[list[float], float]:
    face = probe.face.as_dict()
    return face["box"], face["score"]
