"""Fixtures that build real things: MariaDB and Redis, a key set, the stack as processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import MySQLdb
import pytest
import redis
import requests

from veilface.config import load_settings
from veilface.local.stack import SERVICES, Stack, service_env

MYSQL_HOST = os.environ.get("VEILFACE_TEST_MYSQL_HOST", "127.0.0.1")
#: Concurrent test sessions (several developers on one machine) must not share queues.
REDIS_URL = os.environ.get("VEILFACE_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{1 + os.getpid() % 15}")
MYSQL_DATABASE = f"veilface_test_{os.getpid()}"
ADMIN_KEY = "test-admin-" + uuid.uuid4().hex
#: The services with a database account of their own (``veilface db migrate`` creates them).
SERVICE_ACCOUNTS = ("gateway", "embedder", "matcher")
SERVICE_PASSWORD = uuid.uuid4().hex
#: The request limits the session stacks turn off (0).
UNTHROTTLED = (
    "VEILFACE_RATE_LIMIT_PER_MINUTE",
    "VEILFACE_SUBJECT_VERIFY_PER_MINUTE",
    "VEILFACE_AUTH_FAILURES_PER_MINUTE",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mysql(*statements: str) -> None:
    conn = MySQLdb.connect(host=MYSQL_HOST, user="root", passwd="")
    try:
        cur = conn.cursor()
        for statement in statements:
            cur.execute(statement)
    finally:
        conn.close()


def fresh_mysql_database(name: str) -> str:
    """Drop and create database ``name`` on the test MariaDB; returns its SQLAlchemy URL."""
    _mysql(
        f"DROP DATABASE IF EXISTS `{name}`",
        f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
    )
    return f"mysql+mysqldb://root@{MYSQL_HOST}:3306/{name}?charset=utf8mb4"


def service_accounts(database: str, port: int = 3306) -> dict[str, str]:
    """``VEILFACE_<SERVICE>_DATABASE_URL`` of each service: an account of its own on ``database``
    (named after it, so parallel test sessions and databases never share one)."""
    return {
        f"VEILFACE_{service.upper()}_DATABASE_URL": (
            f"mysql+mysqldb://{database}_{service}:{SERVICE_PASSWORD}@{MYSQL_HOST}:{port}/{database}"
            "?charset=utf8mb4"
        )
        for service in SERVICE_ACCOUNTS
    }


def drop_mysql_database(name: str) -> None:
    """Drop database ``name`` and the services' accounts on it."""
    _mysql(
        f"DROP DATABASE IF EXISTS `{name}`",
        *(f"DROP USER IF EXISTS '{name}_{service}'@'%'" for service in SERVICE_ACCOUNTS),
    )


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = load_settings().data_dir
    assert (path / "lfw" / "images").is_dir(), f"face data missing under {path} (VEILFACE_SHARED_DIR)"
    return path


@pytest.fixture(scope="session")
def lfw_people(data_dir: Path) -> list[list[Path]]:
    """LFW identities with at least two photos, each as its sorted photo list."""
    people = []
    for folder in sorted((data_dir / "lfw" / "images").iterdir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 2:
            people.append(photos)
    return people


def new_key_set(folder: Path) -> Path:
    """Write a fresh CKKS key set, queue key and task key into ``folder``."""
    from veilface.crypto.keyfiles import generate_message_keys
    from veilface.crypto.params import DEFAULT_PARAMS
    from veilface.crypto.secret import generate_keyset

    generate_keyset(folder, DEFAULT_PARAMS)
    generate_message_keys(folder)
    return folder


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory) -> Path:
    """One key set (CKKS, queue and task keys) for the whole session (key generation takes seconds)."""
    return new_key_set(tmp_path_factory.mktemp("keys"))


def _stack_env(var_dir: Path, key_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEILFACE_")}
    (var_dir / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(
        TMPDIR=str(var_dir / "tmp"),  # the services' temporary files, where the dump test scans them
        VEILFACE_VAR_DIR=str(var_dir),
        VEILFACE_KEY_DIR=str(key_dir),
        VEILFACE_BOOTSTRAP_API_KEY=ADMIN_KEY,
        VEILFACE_SHARED_DIR=str(load_settings().shared_dir),
        VEILFACE_GATEWAY_WORKERS="2",
        VEILFACE_COMPACTION_THRESHOLD="16",
        # The session stack serves many test modules with a few read keys from one address:
        # unthrottled. tests/test_read_key_limits.py runs a gateway with the default limits.
        **{name: "0" for name in UNTHROTTLED},
        **extra,
    )
    return env


def _run_stack(env: dict[str, str], var_dir: Path, matchers: int = 1) -> Iterator[Stack]:
    stack = Stack(env=env, bind=f"127.0.0.1:{free_port()}", matchers=matchers, log_dir=var_dir / "logs")
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@contextmanager
def gateway_process(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """One more gunicorn gateway (``env`` names its database, Redis and settings; it connects with
    the gateway's own database account); yields its URL once ``/healthz`` answers. It shares the
    workers of the stack that uses the same backends."""
    bind = f"127.0.0.1:{free_port()}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=SERVICES / "gateway",
            env={**service_env(env, "gateway"), "VEILFACE_BIND": bind},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://{bind}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        yield f"http://{bind}"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mysql_redis_env(tmp_path_factory, key_dir: Path) -> Iterator[dict[str, str]]:
    """Production backends: a fresh MariaDB database and a flushed Redis database.

    ``VEILFACE_DATABASE_URL`` is root's (the migration and the tests' own looks); the gateway and
    the workers each connect with their own least-privilege account (see ``service_accounts``).
    """
    redis.Redis.from_url(REDIS_URL).flushdb()
    var_dir = tmp_path_factory.mktemp("var-mysql")
    yield _stack_env(
        var_dir,
        key_dir,
        VEILFACE_DATABASE_URL=fresh_mysql_database(MYSQL_DATABASE),
        VEILFACE_BROKER_URL=REDIS_URL,
        **service_accounts(MYSQL_DATABASE),
    )
    drop_mysql_database(MYSQL_DATABASE)


@pytest.fixture(scope="session")
def stack(mysql_redis_env: dict[str, str]) -> Iterator[Stack]:
    """The production stack (gunicorn gateway, embedder, he-matcher) on MariaDB + Redis."""
    yield from _run_stack(mysql_redis_env, Path(mysql_redis_env["VEILFACE_VAR_DIR"]))


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory, key_dir: Path) -> Iterator[Stack]:
    """The stack on the embedded defaults: SQLite file and the filesystem queue."""
    var_dir = tmp_path_factory.mktemp("var-embedded")
    yield from _run_stack(_stack_env(var_dir, key_dir), var_dir)


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"X-API-Key": ADMIN_KEY}
