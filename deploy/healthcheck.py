"""Container healthchecks of the compose deployment (run as ``python /app/deploy/healthcheck.py``).

``gateway``: ``GET /healthz`` on the local gunicorn answers 200.
``worker NAME``: this container's Celery worker (node ``NAME@hostname``, as started with
``-n NAME@%h``) wrote its heartbeat row within ``VEILFACE_WORKER_TTL_S`` seconds: the row the
gateway's ``/readyz`` and shard router read, so a healthy worker is one that gets work.
Exit status 0 means healthy.
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from datetime import timedelta


def gateway_ok(url: str = "http://127.0.0.1:8080/healthz") -> bool:
    with urllib.request.urlopen(url, timeout=4) as response:
        return response.status == 200


def worker_ok(name: str, hostname: str | None = None, settings=None) -> bool:
    from veilface.config import load_settings
    from veilface.store.db import make_engine, session_factory
    from veilface.store.models import Worker, utcnow

    settings = settings or load_settings()
    engine = make_engine(settings)
    try:
        with session_factory(engine)() as session:
            row = session.get(Worker, f"{name}@{hostname or socket.gethostname()}")
            return row is not None and utcnow() - row.last_seen <= timedelta(seconds=settings.worker_ttl_s)
    finally:
        engine.dispose()


def main(argv: list[str]) -> int:
    if argv == ["gateway"]:
        return 0 if gateway_ok() else 1
    if len(argv) == 2 and argv[0] == "worker":
        return 0 if worker_ok(argv[1]) else 1
    print("usage: healthcheck.py gateway | worker NAME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
