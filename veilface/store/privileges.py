"""Least privilege in the store: the database account of each service and its rights (MySQL/MariaDB).

Only the migration (``veilface db migrate``, run with an administrator's URL) changes the schema.
The gateway may read and write every table but may not rewrite the audit log or delete the
deployment's key set; an embedder adds subjects and delta templates; an he-matcher folds delta
templates into packed blocks. Neither worker can read or write ``api_keys`` or ``audit_log``, nor
change ``key_sets`` or ``public_key_set_parts`` (they read them), and no service has a DDL right.
Column lists narrow updates further: a matcher may change a template's state and ciphertext, never
its subject; and reads: a matcher sees a template's position, state and ciphertext only, never its
subject, image hash or time, so it cannot tell a hidden sentinel (a template with no subject) from
an enrolled face, and it holds no right on ``sentinels`` (the embedder neither: only the gateway
reads the seeds).
SQLite has no accounts: there every process holds every right (the embedded defaults).

Checked on MariaDB 10.11 (the tests' and the compose file's server). MySQL 8.0.22 and later also
want an UPDATE, DELETE or LOCK TABLES right for a locking read, which the embedder makes on
``subjects`` when it loses the race to create a subject; on MySQL that path is refused.
"""

from __future__ import annotations

from sqlalchemy import Connection, make_url

from veilface.store.models import Base

DML = ("SELECT", "INSERT", "UPDATE", "DELETE")
#: A worker's heartbeat row (``veilface.store.presence.Heartbeat``): added at start, touched, removed at stop.
HEARTBEAT = ("SELECT", "INSERT", "UPDATE (model_version, last_seen)", "DELETE")
#: Every worker compares its key set with the deployment's and loads the public key set of a gallery
#: with keys of its own (``veilface.store.keysets``); only the gateway records or deletes them.
KEY_SET_READER = ("SELECT",)

#: ``service -> table -> rights``; a table a service does not list is closed to it.
GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "gateway": {
        **dict.fromkeys(Base.metadata.tables, DML),
        "audit_log": ("SELECT", "INSERT"),
        "key_sets": ("SELECT", "INSERT", "UPDATE (fingerprint, announced_at)"),
    },
    "embedder": {
        "galleries": ("SELECT",),
        "subjects": ("SELECT", "INSERT"),
        "slot_counters": ("SELECT", "INSERT", "UPDATE (next_slot)"),
        "templates": ("SELECT", "INSERT"),
        "workers": HEARTBEAT,
        "key_sets": KEY_SET_READER,
        "public_key_set_parts": KEY_SET_READER,
    },
    "matcher": {
        "templates": (
            "SELECT (id, gallery_id, model_version, block_no, slot, state, ciphertext)",
            "UPDATE (state, ciphertext)",
        ),
        "blocks": ("SELECT", "INSERT", "UPDATE (version, filled, updated_at)"),
        "block_ciphertexts": ("SELECT", "INSERT", "DELETE"),
        "workers": HEARTBEAT,
        "key_sets": KEY_SET_READER,
        "public_key_set_parts": KEY_SET_READER,
    },
}

#: The account host: any, the database's network decides who can reach it.
ACCOUNT = "%s@'%%'"


def grant_statements(service: str, database: str) -> list[str]:
    """The GRANT statements giving ``service``'s account (the ``%s`` parameter) its rights."""
    return [
        f"GRANT {', '.join(rights)} ON `{database}`.`{table}` TO {ACCOUNT}"
        for table, rights in GRANTS[service].items()
    ]


def granted_rights(service: str, database: str) -> set[tuple[str, str, str, str]]:
    """``(database, table, privilege, column)`` of each right of ``service`` ('' for a whole table)."""
    wanted = set()
    for table, rights in GRANTS[service].items():
        for right in rights:
            privilege, _, columns = right.partition(" (")
            for column in columns.rstrip(")").split(", ") if columns else [""]:
                wanted.add((database, table, privilege, column))
    return wanted


def held_rights(conn: Connection, user: str) -> set[tuple[str, str, str, str]]:
    """The rights ``user@'%'`` holds, written as :func:`granted_rights` writes them; one on every
    table of a database, or on every database, has ``*`` for the table."""
    grantee = (f"'{user}'@'%'",)
    return {
        tuple(row)
        for row in conn.exec_driver_sql(
            "SELECT table_schema, table_name, privilege_type, '' FROM information_schema.table_privileges"
            " WHERE grantee = %s"
            " UNION SELECT table_schema, table_name, privilege_type, column_name"
            " FROM information_schema.column_privileges WHERE grantee = %s"
            " UNION SELECT table_schema, '*', privilege_type, '' FROM information_schema.schema_privileges"
            " WHERE grantee = %s"
            " UNION SELECT '*', '*', privilege_type, '' FROM information_schema.user_privileges"
            " WHERE grantee = %s AND privilege_type <> 'USAGE'",
            grantee * 4,
        )
    }


def apply_grants(conn: Connection, service_urls: dict[str, str]) -> dict[str, str]:
    """Create or update each service's account from its URL (user, password) with only its rights.

    An account holding other rights, on any database, loses them all before it gets its own: an
    account belongs to one service of one deployment. One that holds exactly its rights is left
    alone, so a migration run again beside the running stack never interrupts it. Returns
    ``service -> user``. Raises ``ValueError`` for a URL without a user, one on another database,
    an account shared by two services, or the account running the migration.
    """
    database = conn.engine.url.database
    users: dict[str, str] = {}
    for service, url in service_urls.items():
        parsed = make_url(url)
        if not parsed.username or parsed.database != database:
            raise ValueError(f"the {service} URL must name a user and the database {database!r}")
        if parsed.username == conn.engine.url.username or parsed.username in users.values():
            raise ValueError(f"the {service} URL needs an account of its own, not {parsed.username!r}")
        users[service] = user = parsed.username
        credentials = (user, parsed.password or "")
        conn.exec_driver_sql(f"CREATE USER IF NOT EXISTS {ACCOUNT} IDENTIFIED BY %s", credentials)
        conn.exec_driver_sql(f"ALTER USER {ACCOUNT} IDENTIFIED BY %s", credentials)
        if held_rights(conn, user) != granted_rights(service, database):
            conn.exec_driver_sql(f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {ACCOUNT}", (user,))
            for statement in grant_statements(service, database):
                conn.exec_driver_sql(statement, (user,))
    return users
