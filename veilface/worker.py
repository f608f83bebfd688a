"""What every worker process does at start: load the public context, refuse a secret key,
announce itself with a heartbeat, and take its own direct queue when it has one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from celery.signals import celeryd_after_setup, worker_shutdown
from sqlalchemy.orm import Session, sessionmaker

from veilface import errors
from veilface.config import Settings
from veilface.crypto.public import PublicContext
from veilface.store.db import create_schema, make_engine, session_factory
from veilface.store.models import Worker
from veilface.workers import Heartbeat

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    """Resources a worker process holds for its whole life."""

    settings: Settings
    sessions: sessionmaker[Session]
    context: PublicContext


def load_runtime(settings: Settings) -> WorkerRuntime:
    """Open the store and the public context; exit with a clear line if it holds a secret key."""
    try:
        context = PublicContext.load(settings.public_context_path)
    except errors.VeilfaceError as exc:
        log.critical("refusing to start: %s", exc.message)
        sys.exit(3)
    engine = make_engine(settings)
    create_schema(engine)
    log.info("public context %s loaded (no secret key)", context.fingerprint[:12])
    return WorkerRuntime(settings, session_factory(engine), context)


def direct_queue(nodename: str) -> str:
    """The queue only this matcher consumes: the gateway sends it the blocks it owns."""
    return f"match.{nodename}"


def announce(
    runtime: WorkerRuntime,
    kind: str,
    *,
    queue: str | None,
    model_version: Callable[[], str | None],
    provider: str | None,
) -> None:
    """Start the heartbeat once Celery has named this worker.

    ``queue=None`` gives the worker a direct queue of its own (matchers); otherwise the
    worker is recorded as consuming the shared ``queue``.
    """

    @celeryd_after_setup.connect(weak=False)
    def _setup(sender, instance, **_kwargs) -> None:
        consumed = queue or direct_queue(sender)
        if queue is None:
            instance.app.amqp.queues.select_add(consumed)
        row = Worker(
            name=sender,
            kind=kind,
            queue=consumed,
            key_fingerprint=runtime.context.fingerprint,
            provider=provider,
        )
        heartbeat = Heartbeat(runtime.sessions, row, model_version)
        heartbeat.beat()
        heartbeat.start()
        worker_shutdown.connect(lambda **_: heartbeat.stop(), weak=False)
        log.info(
            "%s %s online (queue %s, model %s, provider %s)", kind, sender, consumed, model_version, provider
        )
