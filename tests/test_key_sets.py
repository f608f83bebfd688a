"""The deployment's key set has a table of its own, ``key_sets``: the migration moves it out of the
``workers`` row that held it before, the gateway records it, the workers can only read it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import OperationalError

from tests.support import MYSQL, MYSQL_DATABASE, SERVICE_PASSWORD
from veilface.errors import KeyMismatch
from veilface.local.services import SERVICE_ACCOUNTS
from veilface.store.db import create_schema, session_factory, session_scope
from veilface.store.keysets import announce_key_set, check_key_set, deployment_key_set, set_key_set
from veilface.store.models import KeySet, Worker
from veilface.store.privileges import apply_grants

OLD, NEW = "a" * 64, "b" * 64
#: MariaDB's "<command> command denied to user ... for table" and "... for column".
DENIED = (1142, 1143)
WORKER_ROW = (
    "INSERT INTO workers (name, kind, queue, key_fingerprint, started_at, last_seen)"
    " VALUES (:name, :kind, :queue, :fingerprint, :at, :at)"
)


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_the_migration_moves_the_key_set_out_of_its_legacy_worker_row(backend: str, tmp_path: Path):
    """A database of the release before ``key_sets``: the gateway's fingerprint sat in a worker row
    named and of kind ``gateway``. The migration makes it the deployment's key set, removes the row,
    leaves the real workers alone, and changes nothing when run again."""
    name = f"{MYSQL_DATABASE}_keysets"
    url = MYSQL.create_database(name) if backend == "mariadb" else f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    create_schema(engine)
    announced = datetime(2026, 11, 1, 12, 30, 5)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE key_sets")
        legacy = {"name": "gateway", "kind": "gateway", "queue": "-", "fingerprint": OLD, "at": announced}
        conn.execute(text(WORKER_ROW), legacy)
        matcher = {"name": "matcher@h.1", "kind": "matcher", "queue": "match.m", "fingerprint": OLD}
        conn.execute(text(WORKER_ROW), {**matcher, "at": announced})
    create_schema(engine)
    create_schema(engine)
    sessions = session_factory(engine)
    with session_scope(sessions) as session:
        (key_set,) = session.scalars(select(KeySet)).all()
        assert (key_set.name, key_set.fingerprint, key_set.announced_at) == ("deployment", OLD, announced)
        assert session.scalars(select(Worker.name)).all() == ["matcher@h.1"]
        assert deployment_key_set(session) == OLD
        check_key_set(session, OLD)
        with pytest.raises(KeyMismatch, match="not this deployment's key set"):
            check_key_set(session, NEW)
    engine.dispose()
    if backend == "mariadb":
        MYSQL.drop_database(name)


def test_a_recorded_key_set_wins_over_a_legacy_row(tmp_path: Path):
    """A gateway of this release already recorded the key set: the legacy row is stale and only goes."""
    engine = create_engine(f"sqlite:///{tmp_path / 'both.db'}")
    create_schema(engine)
    announce_key_set(session_factory(engine), NEW)
    with engine.begin() as conn:
        legacy = {"name": "gateway", "kind": "gateway", "queue": "-", "fingerprint": OLD}
        conn.execute(text(WORKER_ROW), {**legacy, "at": datetime(2026, 1, 1)})
    create_schema(engine)
    with session_scope(session_factory(engine)) as session:
        assert deployment_key_set(session) == NEW and session.scalar(select(Worker)) is None


def _denied(sessions, write) -> int:
    """The MariaDB error code ``write(session)`` got (0: it was committed)."""
    try:
        with session_scope(sessions) as session:
            write(session)
        return 0
    except OperationalError as exc:
        return exc.orig.args[0]


def test_only_the_gateway_records_the_key_set_and_no_service_deletes_it():
    database = f"{MYSQL_DATABASE}_keyrights"
    owner = create_engine(MYSQL.create_database(database))
    urls = {
        service: MYSQL.service_urls(database, SERVICE_PASSWORD)[f"VEILFACE_{service.upper()}_DATABASE_URL"]
        for service in SERVICE_ACCOUNTS
    }
    engines = {service: create_engine(url) for service, url in urls.items()}
    try:
        create_schema(owner)
        with owner.begin() as conn:
            apply_grants(conn, urls)
        gateway = session_factory(engines["gateway"])
        announce_key_set(gateway, OLD)  # the first start inserts the row
        announce_key_set(gateway, NEW)  # a rotation or a later start updates it
        for worker in ("embedder", "matcher"):
            sessions = session_factory(engines[worker])
            with session_scope(sessions) as session:
                assert deployment_key_set(session) == NEW
                check_key_set(session, NEW)
            assert _denied(sessions, lambda session: set_key_set(session, OLD)) in DENIED
            assert _denied(sessions, lambda session: session.execute(text("DELETE FROM key_sets"))) in DENIED
        assert _denied(gateway, lambda session: session.execute(text("DELETE FROM key_sets"))) in DENIED
        with session_scope(gateway) as session:
            assert deployment_key_set(session) == NEW
    finally:
        for engine in (owner, *engines.values()):
            engine.dispose()
        MYSQL.drop_database(database)
