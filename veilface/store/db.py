"""Engine and session handling for the ciphertext store (MySQL/MariaDB, or SQLite by default)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, MetaData, create_engine, delete, event, insert, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.schema import CreateIndex, CreateTable

from veilface import errors
from veilface.config import Settings
from veilface.store.models import DEPLOYMENT_KEY_SET, Base, KeySet, Template, Worker

SCHEMA_SQL = Path(__file__).resolve().parent.parent.parent / "sql" / "schema.sql"

#: What to do when the MySQL driver is missing; ``make`` prints the same advice.
MYSQL_DRIVER_HINT = (
    "the MySQL driver is not installed: pip install 'veilface[mysql]' (it builds against the "
    "MariaDB client library: apt-get install libmariadb-dev pkg-config on Debian/Ubuntu)"
)


#: Columns of ``blocks`` added after the first release, for databases created before them:
#: the layout of a block's diagonals (existing blocks are single-step, layout 1).
BLOCK_LAYOUT_COLUMNS = {
    "layout_version": "layout_version INTEGER NOT NULL DEFAULT 1",
    "baby_steps": "baby_steps INTEGER NULL",
}
#: Columns of ``galleries`` added with per-gallery key sets: every gallery made before them was
#: encrypted under the deployment's key set.
GALLERY_KEY_COLUMNS = {
    "key_mode": "key_mode VARCHAR(16) NOT NULL DEFAULT 'deployment'",
    "key_fingerprint": "key_fingerprint VARCHAR(64) NULL",
}
#: Before ``key_sets`` existed, the deployment's key set was the ``workers`` row of this name and kind.
LEGACY_KEY_SET_ROW = "gateway"


def make_engine(settings: Settings) -> Engine:
    """Create the engine for ``settings.sqlalchemy_url`` (SQLite folders are created)."""
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    try:
        return create_engine(url, pool_pre_ping=True, pool_recycle=3600, pool_size=5, max_overflow=10)
    except ModuleNotFoundError as exc:
        if exc.name == "MySQLdb":
            raise errors.MissingDriver(MYSQL_DRIVER_HINT) from None
        scheme = url.split(":", 1)[0]
        raise errors.MissingDriver(f"the database driver of {scheme} URLs is not installed") from None


def create_schema(engine: Engine) -> None:
    """Create missing tables: ``sql/schema.sql`` on MySQL/MariaDB, the models elsewhere.

    DDL: only the migration (``veilface db migrate``) runs it; services call :func:`require_schema`.
    """
    if engine.dialect.name in ("mysql", "mariadb"):
        lines = [line.split("--", 1)[0] for line in SCHEMA_SQL.read_text().splitlines()]
        statements = [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
            _add_eval_scope(conn)
    else:
        # IF NOT EXISTS, not create_all's check-then-create: the gateway and the workers of the
        # embedded stack start together on one SQLite file, and a check could be stale by its create.
        with engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                conn.execute(CreateTable(table, if_not_exists=True))
                for index in table.indexes:
                    conn.execute(CreateIndex(index, if_not_exists=True))
    with engine.begin() as conn:
        add_missing_columns(conn, "blocks", BLOCK_LAYOUT_COLUMNS)
        add_missing_columns(conn, "galleries", GALLERY_KEY_COLUMNS)
        move_legacy_key_set(conn)
        allow_subjectless_templates(conn)


def add_missing_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """Add ``columns`` (name -> definition) that ``table`` lacks, as a database made before them
    does (:data:`BLOCK_LAYOUT_COLUMNS`, :data:`GALLERY_KEY_COLUMNS`); idempotent, and on MariaDB
    ``IF NOT EXISTS`` also covers processes that start together."""
    present = {column["name"] for column in inspect(conn).get_columns(table)}
    guard = "IF NOT EXISTS " if conn.dialect.name in ("mysql", "mariadb") else ""
    for name, definition in columns.items():
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {guard}{definition}")


def move_legacy_key_set(conn: Connection) -> None:
    """Move the key set of a database made before ``key_sets`` out of its ``workers`` row.

    Its fingerprint becomes the ``key_sets`` row unless one is recorded already (a gateway of this
    version announced it, and that one is current); the legacy row goes. Idempotent; a migration
    running beside it waits on the legacy row's lock and then finds nothing to move.
    """
    legacy = (Worker.name == LEGACY_KEY_SET_ROW) & (Worker.kind == LEGACY_KEY_SET_ROW)
    row = conn.execute(
        select(Worker.key_fingerprint, Worker.last_seen).where(legacy).with_for_update()
    ).first()
    if row is None:
        return
    if conn.scalar(select(KeySet.name).where(KeySet.name == DEPLOYMENT_KEY_SET)) is None:
        conn.execute(
            insert(KeySet).values(
                name=DEPLOYMENT_KEY_SET, fingerprint=row.key_fingerprint, announced_at=row.last_seen
            )
        )
    conn.execute(delete(Worker).where(legacy))


def allow_subjectless_templates(conn: Connection) -> None:
    """Let ``templates.subject_id`` be NULL (a sentinel) in a database made before sentinels.

    MySQL/MariaDB change the column in place; SQLite cannot, so its table is rebuilt under the
    same name, rows and indexes (the documented way: new table, copy, drop, rename).
    """
    subject = next(c for c in inspect(conn).get_columns("templates") if c["name"] == "subject_id")
    if subject["nullable"]:
        return
    if conn.dialect.name in ("mysql", "mariadb"):
        conn.exec_driver_sql("ALTER TABLE templates MODIFY subject_id BIGINT NULL")
        return
    table, scratch = Template.__table__, MetaData()
    for other in Base.metadata.sorted_tables:  # the referenced tables, for the foreign keys
        other.to_metadata(scratch)
    rebuilt = table.to_metadata(scratch, name="templates_new")
    conn.execute(CreateTable(rebuilt))
    columns = ", ".join(column.name for column in table.columns)
    conn.exec_driver_sql(f"INSERT INTO templates_new ({columns}) SELECT {columns} FROM templates")
    conn.exec_driver_sql("DROP TABLE templates")
    conn.exec_driver_sql("ALTER TABLE templates_new RENAME TO templates")
    for index in table.indexes:
        conn.execute(CreateIndex(index, if_not_exists=True))


def require_schema(engine: Engine, tables: Iterable[str] = Base.metadata.tables) -> None:
    """Raise :class:`~veilface.errors.SchemaMissing` unless ``tables`` exist and this account sees them.

    A MySQL account sees only the tables it holds a right on, so a service names the ones it uses.
    """
    wanted = set(tables)
    missing = wanted - set(inspect(engine).get_table_names())
    if missing:
        lacks = "no Veilface table" if missing == wanted else f"no table {', '.join(sorted(missing))}"
        raise errors.SchemaMissing(
            f"the database {engine.url.database or ''} has {lacks}, or this account holds no right on "
            "it: run `veilface db migrate`"
        )


def _add_eval_scope(conn: Connection) -> None:
    """Widen ``api_keys.scope`` of a MySQL database made before the ``eval`` scope.

    Only when it lacks the value: an ALTER at every start would take the table's metadata lock
    while other gateway processes insert their bootstrap key. Appending an ENUM value rewrites
    the table's definition only, not its rows; existing keys keep their scope.
    """
    column_type = conn.exec_driver_sql(
        "SELECT column_type FROM information_schema.columns"
        " WHERE table_schema = DATABASE() AND table_name = 'api_keys' AND column_name = 'scope'"
    ).scalar()
    if "'eval'" not in column_type:
        conn.exec_driver_sql("ALTER TABLE api_keys MODIFY scope ENUM('admin','read','eval') NOT NULL")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def upsert_once(factory: sessionmaker[Session], write: Callable[[Session], None]) -> None:
    """Run ``write`` (a look-up, then an insert if missing) in a transaction, again if it lost a race.

    Several gateway processes start at once on an empty database: two may both miss the row and both
    insert it. The loser's transaction fails on the unique key; its second try finds the row.
    """
    for attempt in range(2):
        try:
            with session_scope(factory) as session:
                write(session)
            return
        except IntegrityError:
            if attempt:
                raise
