"""He-matcher worker: scores encrypted probes against encrypted galleries, compacts deltas.

Start with ``celery -A veilface.workers.matcher worker -Q match --pool solo -n matcher1@%h``
(``make run`` does). It holds the public context only (no secret key: it refuses one),
keeps the blocks the gateway assigns it in memory, and returns encrypted score vectors.
Scale out by starting more of them: each takes its own direct queue. Importing this module
reads no setting and opens nothing: the worker's state (:func:`worker`) is built when Celery
starts the worker, or on the first task.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from veilface import errors
from veilface.config import load_settings
from veilface.crypto.codec import peek_dim
from veilface.crypto.public import PublicContext
from veilface.messaging.app import lazy_celery
from veilface.messaging.messages import (
    TASK_COMPACT,
    TASK_PAIR,
    TASK_SEARCH,
    ScoreAnswer,
    SearchAnswer,
    SearchRequest,
    b64decode,
    error_payload,
)
from veilface.search import repository
from veilface.search.compaction import compact_block, repack_gallery
from veilface.search.pair import score_pair
from veilface.search.shard import Shard
from veilface.store.db import session_scope
from veilface.store.presence import MATCHER
from veilface.workers.runtime import (
    RETRY_TRANSIENT,
    Presence,
    SignedTask,
    WorkerRuntime,
    announce,
    load_runtime,
)

log = logging.getLogger("veilface.he-matcher")

app = lazy_celery()


#: A shard's key: gallery id, model version, and the key set of its ciphertexts (``None``: the
#: deployment's), so a gallery re-keyed since is never searched with the blocks of its old key set.
ShardKey = tuple[int, str, str | None]


@dataclass
class Matcher:
    """What a matcher process holds: its runtime and the shards of blocks it was assigned."""

    runtime: WorkerRuntime
    shards: dict[ShardKey, Shard] = field(default_factory=dict)

    def shard(self, gallery_id: int, model_version: str, dim: int, key_set: str | None = None) -> Shard:
        """The in-memory shard of one gallery, model version and key set (a new one if ``dim``
        changed); the gallery's shards of any other key set are dropped."""
        key = (gallery_id, model_version, key_set)
        shard = self.shards.get(key)
        if shard is None or shard.dim != dim:
            for stale in [k for k in self.shards if k[:2] == key[:2] and k != key]:
                del self.shards[stale]
            context = self.runtime.context_for(key_set)
            shard = self.shards[key] = Shard(context, gallery_id, model_version, dim, blocks=())
        return shard

    def ciphertext(self, text: object, key_set: str | None = None) -> tuple[bytes, int]:
        """Bytes and template dimension of a base64 ciphertext; refused unless the keys of
        ``key_set`` serve it."""
        if not isinstance(text, str):
            raise errors.InvalidCiphertext("a ciphertext must be base64 text")
        blob = b64decode(text)
        dim = peek_dim(blob)
        try:
            self.runtime.context_for(key_set).params.check_dim(dim)
        except ValueError as exc:
            raise errors.InvalidCiphertext(str(exc)) from None
        return blob, dim

    def presence(self) -> Presence:
        """This matcher's heartbeat: a direct queue of its own, no model, TenSEAL on the CPU."""
        return Presence(self.runtime, MATCHER, None, lambda: None, "tenseal-cpu")


@functools.cache
def worker() -> Matcher:
    """This process's matcher, built from the environment's settings on first use."""
    return Matcher(load_runtime(load_settings(), MATCHER))


class MatcherTask(SignedTask):
    """A matcher task: run only when signed, with this process's :func:`worker`."""

    def runtime(self) -> WorkerRuntime:
        return worker().runtime


announce(app, lambda: worker().presence())

#: Search and compaction only read (or fold idempotently), so a lost database connection is
#: retried (:data:`RETRY_TRANSIENT`); pair touches no database and is never retried.
TASK_OPTIONS = {"base": MatcherTask, "acks_late": True, "reject_on_worker_lost": True}


@app.task(name=TASK_SEARCH, bind=True, **TASK_OPTIONS, **RETRY_TRANSIENT)
def search(self, message: dict) -> dict:
    """Score the probes of one image on the blocks (packed and delta) the gateway assigned to
    this worker: the blocks are refreshed once for the batch, and the answer has one part per
    probe, in the order sent."""
    state = worker()
    try:
        settings = state.runtime.settings
        request = SearchRequest.from_message(message, settings.max_faces_per_request or None)
        key_set = request.key_set
        blobs, dims = zip(*(state.ciphertext(p, key_set) for p in request.probes), strict=True)
        shard = state.shard(request.gallery_id, request.model_version, dims[0], key_set)
        shard.assign(request.blocks)
        with session_scope(state.runtime.sessions) as session:
            shard.refresh(session)
        return SearchAnswer.of(self.request.hostname, blobs, shard.search_batch(blobs)).to_message()
    except errors.VeilfaceError as exc:
        log.warning("search refused: %s", exc.message)
        return error_payload(exc)


@app.task(name=TASK_PAIR, bind=True, **TASK_OPTIONS)
def pair(self, probe_b64: str, template_b64: str, key_set: str | None = None) -> dict:
    """1:1 score of a probe against one template ciphertext (slot 0), both encrypted under the key
    set ``key_set`` (``None``: the deployment's)."""
    state = worker()
    try:
        probe, _ = state.ciphertext(probe_b64, key_set)
        template, _ = state.ciphertext(template_b64, key_set)
        result = score_pair(state.runtime.context_for(key_set), probe, template)
        return ScoreAnswer(self.request.hostname, (result,)).to_message()
    except errors.VeilfaceError as exc:
        log.warning("pair refused: %s", exc.message)
        return error_payload(exc)


def compaction_lock_name(engine: Engine, gallery_id: int, model_version: str) -> str:
    """The named lock of one gallery's compaction on ``engine``'s database.

    The database name is part of it: MySQL's named locks are server-wide, and two stacks on
    one server must not skip each other's compactions.
    """
    key = f"{engine.url.database}:{gallery_id}:{model_version}"
    return f"veilface-compact-{hashlib.sha256(key.encode()).hexdigest()[:32]}"


@contextmanager
def _compaction_lock(engine: Engine, gallery_id: int, model_version: str) -> Iterator[bool]:
    """Yield whether this worker may compact the gallery now: one compaction per gallery at a time.

    Two matchers compacting the same new block at once could each fold into an empty block,
    the second overwriting the first's diagonals. The gateway asks for a compaction after
    every enrollment past the threshold, so with several matchers that is common. On MySQL
    a named lock (held by this connection, released if the worker dies) serialises them; a
    compaction that finds it taken returns at once instead of keeping this matcher from its
    searches: the running one folds again what was enrolled meanwhile (:func:`compact`).
    SQLite allows one writer at a time and refuses a write from a stale snapshot, so it
    needs no lock.
    """
    if engine.dialect.name not in ("mysql", "mariadb"):
        yield True
        return
    name = compaction_lock_name(engine, gallery_id, model_version)
    with engine.connect() as conn:
        acquired = conn.scalar(text("SELECT GET_LOCK(:name, 0)"), {"name": name}) == 1
        try:
            yield acquired
        finally:
            if acquired:
                conn.scalar(text("SELECT RELEASE_LOCK(:name)"), {"name": name})


#: Blocks a compaction re-lays out at most after its fold, so that it stays short; the next
#: compactions go on where it stopped.
REPACK_PER_COMPACTION = 4


@app.task(name=TASK_COMPACT, ignore_result=True, **TASK_OPTIONS, **RETRY_TRANSIENT)
def compact(gallery_id: int, model_version: str, key_set: str | None = None) -> dict:
    """Fold the gallery's delta into its packed blocks, one block at a time, with the public keys of
    the gallery's key set ``key_set`` (``None``: the deployment's).

    Nobody waits for a compaction, so its result is not stored (nor left in the result backend).

    A compaction killed halfway leaves every block either folded or untouched (each
    block's write is one transaction, which rolls back as a whole); the next compaction
    finishes the job. Enrollments are not blocked while a block is folded; when they have put
    the delta past the threshold again by the end of a fold, the same compaction folds again,
    since the compactions they asked for found the lock taken and returned.
    """
    state = worker()
    sessions = state.runtime.sessions
    try:
        context = state.runtime.context_for(key_set)
    except errors.VeilfaceError as exc:
        log.warning("compaction refused: %s", exc.message)
        return error_payload(exc)
    folded = repacked = 0
    at_least = 1  # the gateway asked for this one; a later round only past the threshold
    while True:
        with _compaction_lock(sessions.kw["bind"], gallery_id, model_version) as acquired:
            if not acquired:
                log.info("compaction of gallery %d already running elsewhere; skipped", gallery_id)
                if not folded:
                    return {"folded": 0, "skipped": True}
                break
            pending = _fold_delta(context, sessions, gallery_id, model_version, at_least)
            if not pending:
                break
            folded += pending
            # A new block can raise the gallery's baby steps: re-lay out a few blocks written
            # before it (about a second each; single-step blocks of older releases are left to
            # the CLI).
            repacked += repack_gallery(
                context, sessions, gallery_id, limit=REPACK_PER_COMPACTION, single_step=False
            )[0]
        at_least = state.runtime.settings.compaction_threshold
    if not folded:
        return {"folded": 0}
    shard = state.shards.get((gallery_id, model_version, key_set))
    if shard is not None:  # reload the rewritten blocks it holds now, not in the next search
        with session_scope(sessions) as session:
            shard.refresh(session)
    log.info(
        "compacted %d templates of gallery %d (%s), %d blocks re-laid out",
        folded, gallery_id, model_version, repacked,
    )  # fmt: skip
    return {"folded": folded, "repacked": repacked}


def _fold_delta(
    context: PublicContext,
    sessions: sessionmaker[Session],
    gallery_id: int,
    model_version: str,
    at_least: int,
) -> int:
    """Fold every delta template of the gallery into its block, block by block, if there are
    ``at_least`` of them (at least one); how many were folded."""
    with session_scope(sessions) as session:
        pending = repository.delta_index(session, gallery_id, model_version)
        if len(pending) < max(1, at_least):
            return 0
        (first,) = repository.delta_ciphertexts(session, [pending[0].template_id]).values()
    dim = peek_dim(first)
    return sum(
        compact_block(context, sessions, gallery_id, model_version, block_no, dim)
        for block_no in sorted({entry.block_no for entry in pending})
    )
