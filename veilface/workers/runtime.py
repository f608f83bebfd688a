"""What every worker process does at start: load the public context and the task key, refuse
a secret key, announce itself with a heartbeat, and take its own direct queue when it has one;
what every worker task does first: verify the gateway's signature (:class:`SignedTask`); and
which failures a task may retry (:data:`RETRY_TRANSIENT`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task
from celery.signals import celeryd_after_setup, worker_shutdown
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from veilface import errors
from veilface.config import Settings
from veilface.crypto.public import PublicContext
from veilface.messaging.messages import error_payload
from veilface.messaging.signing import SIGNATURE_HEADER, TaskSigner
from veilface.store.db import make_engine, require_schema, session_factory, session_scope
from veilface.store.keysets import PublicContexts, check_key_set
from veilface.store.models import Worker
from veilface.store.presence import Heartbeat
from veilface.store.privileges import GRANTS

log = logging.getLogger(__name__)


#: Task options of an idempotent task that meets the database: a connection lost, a deadlock or a
#: lock wait timeout (``OperationalError``) or a refused socket sends the task again after 1, 2
#: then 4 s at most (full jitter), three times; after that the task fails with the error.
RETRY_TRANSIENT: dict[str, Any] = {
    "autoretry_for": (OperationalError, ConnectionError),
    "retry_backoff": True,
    "retry_backoff_max": 4,
    "max_retries": 3,
}


@dataclass
class WorkerRuntime:
    """Resources a worker process holds for its whole life."""

    settings: Settings
    sessions: sessionmaker[Session]
    context: PublicContext
    signer: TaskSigner
    key_sets: PublicContexts = field(init=False)

    def __post_init__(self) -> None:
        self.key_sets = PublicContexts(self.sessions)

    def context_for(self, fingerprint: str | None) -> PublicContext:
        """The public context of key set ``fingerprint``: the deployment's for ``None`` (or its own
        fingerprint), else a gallery's, loaded from the store once and kept, fingerprint-checked
        (:class:`~veilface.store.keysets.PublicContexts`; :class:`KeyMismatch` if none is stored)."""
        if fingerprint is None or fingerprint == self.context.fingerprint:
            return self.context
        if not isinstance(fingerprint, str):
            raise errors.BadRequest("a key set is named by its fingerprint")
        return self.key_sets.get(fingerprint)


class SignedTask(Task):
    """Base of every worker task: it runs only a message the gateway signed for it.

    A message that is unsigned, altered, expired or signed for another task name is refused
    before the task does anything: its result is an error payload, and the worker logs one
    WARNING line (no traceback). A worker module declares its tasks with ``base=`` a subclass
    whose :meth:`runtime` returns the process's runtime (built on first use). A retried task
    keeps its id, arguments and signature header, so its signature still verifies.
    """

    def runtime(self) -> WorkerRuntime:
        """The runtime of this worker process, whose signer verifies every message."""
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        signature = getattr(request, SIGNATURE_HEADER, None)
        try:
            self.runtime().signer.verify(self.name, request.id, args, kwargs, signature)
        except errors.MessageRefused as exc:
            log.warning("refused task %s[%s]: %s", self.name, request.id, exc.message)
            return error_payload(exc)
        return self.run(*args, **kwargs)


class _TaskValuesFilter(logging.Filter):
    """Keeps task arguments and results out of Celery's own log lines.

    Celery logs each success as ``Task name[id] succeeded in 0.1s: <result>`` at INFO, and hands
    the arguments to handlers as ``extra``; here results are face boxes and ciphertexts.
    """

    HIDDEN = ("args", "kwargs", "return_value")

    def filter(self, record: logging.LogRecord) -> bool:
        for values in (record.args, getattr(record, "data", None)):
            if isinstance(values, dict):
                values.update({key: "(not logged)" for key in self.HIDDEN if key in values})
        return True


def _hide_task_values() -> None:
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).addFilter(_TaskValuesFilter())


def load_runtime(settings: Settings, kind: str) -> WorkerRuntime:
    """Open the store, the public context and the task key; exit (status 3) with a clear line if a
    key file is missing, the context holds a secret key or belongs to another key set than the one
    the gateway announced, or the tables this ``kind`` of worker uses are missing (``veilface db
    migrate`` creates them)."""
    _hide_task_values()
    try:
        engine = make_engine(settings)
        context = PublicContext.load(settings.public_context_path)
        signer = TaskSigner.from_file(settings.task_key_path, settings.message_ttl_s)
        require_schema(engine, GRANTS[kind])
    except errors.VeilfaceError as exc:
        log.critical("refusing to start: %s", exc.message)
        sys.exit(3)
    sessions = session_factory(engine)
    _wait_for_key_set(sessions, context.fingerprint, settings.worker_ttl_s)
    log.info("public context %s loaded (no secret key)", context.fingerprint[:12])
    return WorkerRuntime(settings, sessions, context, signer)


def _wait_for_key_set(sessions: sessionmaker[Session], fingerprint: str, grace_s: float) -> None:
    """Return once the deployment's key set is ``fingerprint`` (or none is announced yet).

    A gateway restarting with a new key set announces it a few seconds after start, so a
    mismatch is given ``grace_s`` to resolve before the worker exits with status 3.
    """
    deadline = time.monotonic() + grace_s
    while True:
        try:
            with session_scope(sessions) as session:
                check_key_set(session, fingerprint)
            return
        except errors.KeyMismatch as exc:
            if time.monotonic() >= deadline:
                log.critical("refusing to start: %s", exc.message)
                sys.exit(3)
            log.warning("waiting for the gateway to announce this key set: %s", exc.message)
        time.sleep(2.0)


def direct_queue(nodename: str) -> str:
    """The queue only this matcher consumes: the gateway sends it the blocks it owns."""
    return f"match.{nodename}"


@dataclass(frozen=True)
class Presence:
    """How a started worker announces itself in its heartbeat row.

    ``queue=None`` gives the worker a direct queue of its own (matchers); otherwise the
    worker is recorded as consuming the shared ``queue``. ``model_version`` is asked at
    every beat.
    """

    runtime: WorkerRuntime
    kind: str
    queue: str | None
    model_version: Callable[[], str | None]
    provider: str | None


def announce(app: Celery, presence: Callable[[], Presence]) -> None:
    """Once Celery has named a worker of ``app``, build its state and start its heartbeat.

    ``presence`` builds the worker's state on its first call (keys, database, models): a
    worker that cannot start exits there, with status 3 and one line for a refusal
    (:func:`load_runtime`), status 1 and the traceback for anything else.
    """

    @celeryd_after_setup.connect(weak=False)
    def _setup(sender, instance, **_kwargs) -> None:
        if instance.app is not app:
            return
        try:
            online = presence()
        except errors.VeilfaceError as exc:
            log.critical("refusing to start: %s", exc.message)
            sys.exit(3)
        except Exception:  # Celery would log and ignore it: a worker without its state must stop
            log.critical("worker failed to start", exc_info=True)
            sys.exit(1)
        runtime, queue = online.runtime, online.queue
        consumed = queue or direct_queue(sender)
        if queue is None:
            instance.app.amqp.queues.select_add(consumed)
        row = Worker(
            name=sender,
            kind=online.kind,
            queue=consumed,
            key_fingerprint=runtime.context.fingerprint,
            provider=online.provider,
        )
        heartbeat = Heartbeat(runtime.sessions, row, online.model_version)
        # A key set changed since start is left to the thread's first beat: it shuts the worker down.
        with contextlib.suppress(errors.KeyMismatch):
            heartbeat.beat()
        heartbeat.start()
        worker_shutdown.connect(lambda **_: heartbeat.stop(), weak=False)
        log.info(
            "%s %s online (queue %s, model %s, provider %s, key set %s)",
            *(online.kind, sender, consumed, online.model_version(), online.provider),
            runtime.context.fingerprint[:12],
        )
