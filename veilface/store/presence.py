"""Worker presence: each worker process writes a heartbeat row; the gateway reads them.

``/readyz`` needs at least one live worker of each kind, and the shard router spreads
packed blocks over the live matchers whose key fingerprint is the gateway's. Each heartbeat
also compares the worker's key set with the deployment's (:mod:`veilface.store.keysets`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from veilface.errors import KeyMismatch
from veilface.store.db import session_scope
from veilface.store.keysets import check_key_set
from veilface.store.models import Worker, utcnow

log = logging.getLogger(__name__)

EMBEDDER = "embedder"
MATCHER = "matcher"


def worker_name(kind: str) -> str:
    """A name unique to this process: kind, host and pid."""
    return f"{kind}@{socket.gethostname()}.{os.getpid()}"


class Heartbeat(threading.Thread):
    """Upserts this worker's row every ``interval`` seconds until :meth:`stop`.

    ``model_version`` is asked at every beat, so an embedder that switched to a newly
    activated model announces it without a restart. Each beat also compares the worker's key
    set with the deployment's; on a mismatch the worker logs it and shuts down (``on_refused``,
    by default a warm shutdown through SIGTERM), so a key rotation cannot leave old workers
    serving.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        row: Worker,
        model_version: Callable[[], str | None],
        interval: float = 5.0,
        on_refused: Callable[[], None] | None = None,
    ):
        super().__init__(name=f"heartbeat-{row.name}", daemon=True)
        self._sessions = sessions
        self._row = row
        self._model_version = model_version
        self._interval = interval
        self._on_refused = on_refused or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self._stopped = threading.Event()

    def beat(self) -> None:
        """Upsert the row; raises :class:`KeyMismatch` (writing nothing) for a foreign key set."""
        with session_scope(self._sessions) as session:
            check_key_set(session, self._row.key_fingerprint)
            row = session.get(Worker, self._row.name)
            if row is None:
                row = Worker(
                    name=self._row.name,
                    kind=self._row.kind,
                    queue=self._row.queue,
                    key_fingerprint=self._row.key_fingerprint,
                    provider=self._row.provider,
                )
                session.add(row)
            row.model_version = self._model_version()
            row.last_seen = utcnow()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.beat()
            except KeyMismatch as exc:
                log.critical("%s refuses to go on serving: %s", self._row.name, exc.message)
                self._on_refused()
                return
            except Exception:  # the database may be down for a while; keep trying
                log.warning("heartbeat of %s failed; retrying", self._row.name, exc_info=True)
            self._stopped.wait(self._interval)

    def stop(self) -> None:
        """Stop beating and remove the row, so the router stops sending work at once."""
        self._stopped.set()
        try:
            with session_scope(self._sessions) as session:
                session.execute(delete(Worker).where(Worker.name == self._row.name))
        except Exception:
            log.warning("could not remove worker row %s", self._row.name, exc_info=True)


def live_workers(session: Session, kind: str, ttl_s: float) -> list[Worker]:
    """Workers of ``kind`` seen within ``ttl_s`` seconds, by name."""
    cutoff = utcnow() - timedelta(seconds=ttl_s)
    return list(
        session.scalars(
            select(Worker).where(Worker.kind == kind, Worker.last_seen >= cutoff).order_by(Worker.name)
        )
    )
