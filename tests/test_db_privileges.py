"""Least privilege in the store: each service connects with its own MariaDB account, and a worker's
account can neither write ``api_keys`` or ``audit_log`` nor change the schema.

The attack replayed: on a single shared account a row a worker inserted into ``api_keys`` became a
working admin key. Here the insert is refused and the key opens nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import OperationalError

from tests.support import MYSQL, MYSQL_DATABASE, SERVICE_PASSWORD, stack_env, veilface_cli
from veilface.local.services import SERVICE_ACCOUNTS
from veilface.local.stack import SERVICES as SERVICE_DIRS
from veilface.store.apikeys import create_api_key, hash_key
from veilface.store.db import session_factory, session_scope
from veilface.store.models import ApiKey, AuditEntry
from veilface.store.privileges import GRANTS, granted_rights, held_rights

pytestmark = pytest.mark.stack

WORKERS = ("embedder", "matcher")
#: MariaDB's "<command> command denied to user ... for table" and "... for column".
DENIED = (1142, 1143)


def _url(env: dict[str, str], service: str) -> str:
    return env[f"VEILFACE_{service.upper()}_DATABASE_URL"]


def _refused(url: str, statement: str) -> int:
    """Run ``statement`` on ``url``'s account; the MariaDB error code it got (0: it ran)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
        return 0
    except OperationalError as exc:
        return exc.orig.args[0]
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", WORKERS)
def test_a_worker_account_cannot_touch_api_keys_the_audit_log_or_the_schema(stack, mysql_redis_env, service):
    url = _url(mysql_redis_env, service)
    for statement in (
        "INSERT INTO api_keys (name, key_hash, scope, created_at) VALUES ('w', 'h', 'admin', NOW())",
        "SELECT key_hash FROM api_keys",
        "UPDATE api_keys SET revoked_at = NULL",
        "INSERT INTO audit_log (at, action, outcome) VALUES (NOW(), 'forged', 'ok')",
        "DELETE FROM audit_log",
        "CREATE TABLE intruder (id INT)",
        "ALTER TABLE templates ADD COLUMN intruder INT",
        "DROP TABLE templates",
        "TRUNCATE TABLE workers",
    ):
        assert _refused(url, statement) in DENIED, f"{service} may run: {statement}"


def test_the_gateway_account_has_no_ddl_and_cannot_rewrite_the_audit_log(stack, mysql_redis_env):
    url = _url(mysql_redis_env, "gateway")
    for statement in (
        "CREATE TABLE intruder (id INT)",
        "ALTER TABLE api_keys ADD COLUMN intruder INT",
        "DROP TABLE audit_log",
        "UPDATE audit_log SET outcome = 'ok'",
        "DELETE FROM audit_log",
    ):
        assert _refused(url, statement) in DENIED, f"the gateway may run: {statement}"


def test_a_matcher_cannot_move_a_template_to_another_subject(stack, mysql_redis_env):
    """It may fold a template (state, ciphertext) but not relabel it: that would forge a match."""
    url = _url(mysql_redis_env, "matcher")
    assert _refused(url, "UPDATE templates SET subject_id = subject_id") in DENIED
    assert _refused(url, "UPDATE templates SET state = state WHERE id < 0") == 0


@pytest.mark.parametrize("service", WORKERS)
def test_no_worker_reads_the_sentinels_and_a_matcher_cannot_tell_them_apart(stack, mysql_redis_env, service):
    """The sentinels' seeds are the gateway's; a matcher sees a template's position, state and
    ciphertext, never its subject, image hash or time, which would single out a sentinel."""
    url = _url(mysql_redis_env, service)
    assert _refused(url, "SELECT sealed_seed FROM sentinels") in DENIED
    assert _refused(url, "INSERT INTO sentinels (template_id, sealed_seed) VALUES (1, 'x')") in DENIED
    assert _refused(_url(mysql_redis_env, "gateway"), "SELECT COUNT(*) FROM sentinels") == 0
    if service == "matcher":
        for column in ("subject_id", "image_sha256", "created_at"):
            statement = f"SELECT id FROM templates WHERE {column} IS NULL"
            assert _refused(url, statement) in DENIED, column
        statement = "SELECT id, gallery_id, model_version, block_no, slot, state, ciphertext FROM templates"
        assert _refused(url, statement) == 0


def test_an_admin_key_inserted_by_a_matcher_is_not_stored_and_opens_nothing(stack, mysql_redis_env):
    key = "forged-by-a-matcher"
    matcher = create_engine(_url(mysql_redis_env, "matcher"))
    with pytest.raises(OperationalError, match="denied"), session_scope(session_factory(matcher)) as session:
        create_api_key(session, "forged", "admin", key=key)
    matcher.dispose()
    owner = create_engine(mysql_redis_env["VEILFACE_DATABASE_URL"])
    with session_scope(session_factory(owner)) as session:
        assert session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key))) is None
        assert session.scalar(select(AuditEntry).where(AuditEntry.action == "forged")) is None
    owner.dispose()
    response = requests.get(f"{stack.url}/v1/galleries", headers={"X-API-Key": key}, timeout=30)
    assert response.status_code == 401


def test_each_stack_process_connects_with_its_own_account(stack, mysql_redis_env):
    owner = create_engine(mysql_redis_env["VEILFACE_DATABASE_URL"])
    with owner.connect() as conn:
        users = set(
            conn.execute(
                text("SELECT DISTINCT user FROM information_schema.processlist WHERE db = :db"),
                {"db": MYSQL_DATABASE},
            ).scalars()
        )
    owner.dispose()
    assert {f"{MYSQL_DATABASE}_{service}" for service in SERVICE_ACCOUNTS} <= users
    assert users <= {"root"} | {f"{MYSQL_DATABASE}_{service}" for service in SERVICE_ACCOUNTS}


def test_migrate_creates_the_accounts_and_takes_back_rights_added_by_hand(tmp_path: Path, key_dir: Path):
    database = f"{MYSQL_DATABASE}_grants"
    env = stack_env(
        tmp_path,
        key_dir,
        VEILFACE_DATABASE_URL=MYSQL.create_database(database),
        **MYSQL.service_urls(database, SERVICE_PASSWORD),
    )
    try:
        done = veilface_cli(env, "db", "migrate", check=False)
        assert done.returncode == 0, done.stderr
        owner = create_engine(env["VEILFACE_DATABASE_URL"])
        with owner.connect() as conn:
            for service in SERVICE_ACCOUNTS:
                assert held_rights(conn, f"{database}_{service}") == granted_rights(service, database)
            conn.exec_driver_sql(f"GRANT ALL ON `{database}`.* TO '{database}_matcher'@'%%'")
        assert _refused(_url(env, "matcher"), "DELETE FROM api_keys") == 0
        done = veilface_cli(env, "db", "migrate", check=False)
        assert done.returncode == 0, done.stderr
        with owner.connect() as conn:
            assert held_rights(conn, f"{database}_matcher") == granted_rights("matcher", database)
        owner.dispose()
        assert _refused(_url(env, "matcher"), "DELETE FROM api_keys") in DENIED
        assert set(GRANTS["matcher"]).isdisjoint({"api_keys", "audit_log"})
    finally:
        MYSQL.drop_database(database)


def test_migrate_refuses_an_account_shared_by_two_services(tmp_path: Path, key_dir: Path):
    database = f"{MYSQL_DATABASE}_shared"
    accounts = MYSQL.service_urls(database, SERVICE_PASSWORD)
    accounts["VEILFACE_EMBEDDER_DATABASE_URL"] = accounts["VEILFACE_MATCHER_DATABASE_URL"]
    env = stack_env(tmp_path, key_dir, VEILFACE_DATABASE_URL=MYSQL.create_database(database), **accounts)
    try:
        done = veilface_cli(env, "db", "migrate", check=False)
        assert done.returncode != 0 and "an account of its own" in done.stderr
    finally:
        MYSQL.drop_database(database)


def test_a_gateway_without_a_schema_refuses_to_start_in_one_line(tmp_path: Path, key_dir: Path):
    """Services hold no DDL right: they no longer create the schema, they name the command that does."""
    env = stack_env(tmp_path, key_dir, VEILFACE_BIND="127.0.0.1:0")
    env["VEILFACE_GATEWAY_WORKERS"] = "1"  # with two, gunicorn's halt may race the second one's boot
    done = subprocess.run(
        [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=SERVICE_DIRS / "gateway",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "refusing to start" in done.stderr and "run `veilface db migrate`" in done.stderr
    assert "Traceback" not in done.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "veilface", "keys", "list-api-keys"], env=env, capture_output=True, text=True
    )
    assert cli.returncode == 2 and "run `veilface db migrate`" in cli.stderr
