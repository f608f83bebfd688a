"""``sql/schema.sql`` is the source of truth; the SQLAlchemy models must describe it exactly."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from tests.conftest import MYSQL_DATABASE, drop_mysql_database, fresh_mysql_database
from veilface.store.db import create_schema
from veilface.store.models import Base


def _columns(inspector, table: str) -> dict[str, tuple[str, bool]]:
    return {
        c["name"]: (str(c["type"]).split("(")[0].upper(), c["nullable"]) for c in inspector.get_columns(table)
    }


def test_models_match_schema_sql():
    name = f"{MYSQL_DATABASE}_schema"
    engine = create_engine(fresh_mysql_database(name))
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
    drop_mysql_database(name)
