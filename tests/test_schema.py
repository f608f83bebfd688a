"""``sql/schema.sql`` is the source of truth; the SQLAlchemy models must describe it exactly; concurrent
first writes to it are safe."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import create_engine, inspect, select

from tests.support import MYSQL, MYSQL_DATABASE, database_from_before
from veilface.store.apikeys import hash_key, sync_bootstrap_key
from veilface.store.db import BLOCK_LAYOUT_COLUMNS, create_schema, session_factory, session_scope, upsert_once
from veilface.store.galleries import get_or_create_gallery, get_or_create_subject
from veilface.store.models import ApiKey, Base, Gallery


def _columns(inspector, table: str) -> dict[str, tuple[str, bool]]:
    return {
        c["name"]: (str(c["type"]).split("(")[0].upper(), c["nullable"]) for c in inspector.get_columns(table)
    }


def test_models_match_schema_sql():
    name = f"{MYSQL_DATABASE}_schema"
    engine = create_engine(MYSQL.create_database(name))
    create_schema(engine)
    inspector = inspect(engine)
    assert set(inspector.get_table_names()) == set(Base.metadata.tables)
    dialect = engine.dialect
    for name, table in Base.metadata.tables.items():
        actual = _columns(inspector, name)
        expected = {
            c.name: (str(c.type.compile(dialect=dialect)).split("(")[0].upper(), c.nullable)
            for c in table.columns
        }
        assert actual == expected, f"columns of {name} differ"
        assert {tuple(c.name for c in table.primary_key.columns)} == {
            tuple(inspector.get_pk_constraint(name)["constrained_columns"])
        }
        model_uniques = {
            tuple(c.name for c in u.columns)
            for u in table.constraints
            if u.__class__.__name__ == "UniqueConstraint"
        }
        model_uniques |= {(c.name,) for c in table.columns if c.unique}
        sql_uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)}
        sql_uniques |= {tuple(i["column_names"]) for i in inspector.get_indexes(name) if i["unique"]}
        assert model_uniques == sql_uniques, f"unique keys of {name} differ"
        model_fks = {(fk.parent.name, fk.column.table.name) for fk in table.foreign_keys}
        sql_fks = {
            (fk["constrained_columns"][0], fk["referred_table"]) for fk in inspector.get_foreign_keys(name)
        }
        assert model_fks == sql_fks, f"foreign keys of {name} differ"
    with engine.connect() as conn:
        engines = conn.exec_driver_sql(
            "SELECT table_name, engine, table_collation FROM information_schema.tables"
            " WHERE table_schema = DATABASE()"
        ).all()
    assert all(e == "InnoDB" and c.startswith("utf8mb4") for _, e, c in engines)
    engine.dispose()
    MYSQL.drop_database(name)


def test_a_bootstrap_key_inserted_by_another_process_meanwhile_is_not_an_error():
    """Gateway processes start together on an empty database: the one that loses the insert race
    retries, finds the other's row and boots (it used to exit on the duplicate key)."""
    name = f"{MYSQL_DATABASE}_race"
    engine = create_engine(MYSQL.create_database(name))
    create_schema(engine)
    sessions = session_factory(engine)
    attempts = []

    def write(session):
        attempts.append(session)
        if len(attempts) == 1:  # between this look-up and this insert, the other process commits
            assert session.scalar(select(ApiKey)) is None
            with session_scope(sessions) as other:
                sync_bootstrap_key(other, "chosen-key")
            session.add(ApiKey(name="bootstrap", key_hash=hash_key("chosen-key"), scope="admin"))
        else:
            sync_bootstrap_key(session, "chosen-key")

    upsert_once(sessions, write)
    with session_scope(sessions) as session:
        assert len(attempts) == 2 and len(session.scalars(select(ApiKey)).all()) == 1
    engine.dispose()
    MYSQL.drop_database(name)


def test_gallery_and_subject_created_meanwhile_by_another_transaction_are_found():
    """Two first enrollments into a new gallery at once: the one that loses the insert race must find
    the winner's row although its own snapshot predates it (it used to get None: a 500)."""
    name = f"{MYSQL_DATABASE}_created"
    engine = create_engine(MYSQL.create_database(name))
    create_schema(engine)
    sessions = session_factory(engine)
    with session_scope(sessions) as late:
        assert late.scalar(select(Gallery)) is None  # the snapshot of this transaction starts here
        with session_scope(sessions) as first:
            gallery = get_or_create_gallery(first, "lobby")
            get_or_create_subject(first, gallery, "ada")
        found = get_or_create_gallery(late, "lobby")
        assert found is not None and found.name == "lobby"
        subject = get_or_create_subject(late, found, "ada")
        assert subject is not None and subject.name == "ada"
    engine.dispose()
    MYSQL.drop_database(name)


def _create_schema_at(url: str, barrier) -> None:
    barrier.wait()  # every process creates the schema at the same moment
    create_schema(create_engine(url))


def test_processes_creating_the_sqlite_schema_together_all_succeed(tmp_path):
    """The embedded stack's gateway and workers start together on one new SQLite file (a matcher used
    to die on 'table galleries already exists')."""
    url = f"sqlite:///{tmp_path / 'veilface.db'}"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [context.Process(target=_create_schema_at, args=(url, barrier)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    assert set(inspect(create_engine(url)).get_table_names()) == set(Base.metadata.tables)


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_blocks_of_a_database_from_before_layouts_gain_the_layout_columns(backend, tmp_path):
    """A database created before block layouts were versioned gets the columns at start-up;
    its blocks read as single-step (layout 1), and a second start-up changes nothing."""
    with database_from_before(backend, tmp_path, "layout", "blocks", BLOCK_LAYOUT_COLUMNS) as engine:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO blocks (gallery_id, model_version, block_no, dim, version, filled, updated_at)"
                " SELECT id, 'm', 0, 128, 1, 5, '2026-01-01 00:00:00' FROM galleries"
            )
        create_schema(engine)
        create_schema(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT layout_version, baby_steps FROM blocks").all() == [(1, None)]
