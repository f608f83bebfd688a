"""Backing services of one's own for local runs and tests: a free port, polling until something
holds, a private ``redis-server`` and fresh databases on a running MariaDB.

The test suite and ``veilface.bench.load`` both build their stacks on these.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis
from sqlalchemy.engine import make_url

T = TypeVar("T")

#: The services with a database account of their own (``veilface db migrate`` creates them).
SERVICE_ACCOUNTS = ("gateway", "embedder", "matcher")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; after ``timeout_s``
    raise :class:`TimeoutError` naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class RedisServer:
    """A ``redis-server`` of one's own on a free loopback port, its files and log in ``folder``
    (nothing shared is flushed). No snapshots; ``appendonly`` turns on the AOF as in
    ``deploy/docker-compose.yml``."""

    def __init__(self, folder: Path, *, appendonly: bool = False):
        self.folder = folder
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20) -> RedisServer:
        """Start the server and wait until it answers a ping."""
        argv = [
            "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)),
            *("--appendonly", "yes" if self.appendonly else "no", "--save", ""),
            *("--maxmemory-policy", "noeviction", "--logfile", str(self.folder / "redis.log")),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_for(lambda: _answers(client), timeout_s, "the private redis-server to start")
        except TimeoutError:
            self.kill()
            raise
        return self

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM: a clean shutdown."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=timeout_s)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown (the AOF keeps all but the last second)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass(frozen=True)
class MySQLServer:
    """A running MariaDB (or MySQL) server, reached as an account that may create databases and
    users (root on a developer's machine)."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""

    @classmethod
    def from_url(cls, url: str) -> MySQLServer:
        """The server and account of a SQLAlchemy URL (its database name is not kept)."""
        parts = make_url(url)
        return cls(
            parts.host or cls.host, parts.port or cls.port, parts.username or cls.user, parts.password or ""
        )

    def execute(self, *statements: str) -> list[tuple]:
        """Run ``statements`` in order on one connection; the rows of the last one (the MySQL
        driver is an extra: imported here)."""
        import MySQLdb

        conn = MySQLdb.connect(host=self.host, port=self.port, user=self.user, passwd=self.password)
        try:
            cur = conn.cursor()
            for statement in statements:
                cur.execute(statement)
            return list(cur.fetchall())
        finally:
            conn.close()

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` for this server's account."""
        account = f"{self.user}:{self.password}" if self.password else self.user
        return f"mysql+mysqldb://{account}@{self.host}:{self.port}/{database}?charset=utf8mb4"

    def create_database(self, name: str) -> str:
        """Drop and create database ``name``; returns its SQLAlchemy URL."""
        self.execute(
            f"DROP DATABASE IF EXISTS `{name}`",
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` and the service accounts made for it (see :meth:`service_urls`)."""
        self.execute(
            f"DROP DATABASE IF EXISTS `{name}`",
            *(f"DROP USER IF EXISTS '{name}_{service}'@'%'" for service in SERVICE_ACCOUNTS),
        )

    def service_urls(self, database: str, password: str, port: int | None = None) -> dict[str, str]:
        """``VEILFACE_<SERVICE>_DATABASE_URL`` of each service: an account of its own on ``database``,
        named after it so that databases (and parallel sessions) never share one. ``port`` reaches
        the server another way (a proxy in front of it); ``veilface db migrate`` creates the accounts."""
        return {
            f"VEILFACE_{service.upper()}_DATABASE_URL": (
                f"mysql+mysqldb://{database}_{service}:{password}@{self.host}:{port or self.port}/{database}"
                "?charset=utf8mb4"
            )
            for service in SERVICE_ACCOUNTS
        }
