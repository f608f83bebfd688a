"""The private backing services that tests and ``veilface.bench.load`` start: polling, a Redis
server of one's own and databases on the running MariaDB."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.support import MYSQL, MYSQL_DATABASE
from veilface.local.services import SERVICE_ACCOUNTS, MySQLServer, RedisServer, free_port, wait_for


def test_wait_for_returns_the_first_truthy_value_and_names_what_timed_out():
    answers = iter([None, 0, "ready"])
    assert wait_for(lambda: next(answers), 5, "the third answer", 0.01) == "ready"
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="waiting for nothing at all"):
        wait_for(lambda: False, 0.2, "nothing at all", 0.05)
    assert time.monotonic() - started < 2


def test_a_free_port_can_be_bound():
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_mysql_server_reads_its_account_from_a_url_and_writes_urls_back():
    server = MySQLServer.from_url("mysql+mysqldb://bench:pw@db.example:3307/load?charset=utf8mb4")
    assert server == MySQLServer("db.example", 3307, "bench", "pw")
    assert server.url("other") == "mysql+mysqldb://bench:pw@db.example:3307/other?charset=utf8mb4"
    assert MySQLServer().url("x") == "mysql+mysqldb://root@127.0.0.1:3306/x?charset=utf8mb4"
    urls = server.service_urls("load", "secret", port=4000)
    assert sorted(urls) == sorted(f"VEILFACE_{s.upper()}_DATABASE_URL" for s in SERVICE_ACCOUNTS)
    assert urls["VEILFACE_MATCHER_DATABASE_URL"] == (
        "mysql+mysqldb://load_matcher:secret@db.example:4000/load?charset=utf8mb4"
    )


def test_a_fresh_database_is_empty_and_dropping_it_removes_it():
    name = f"{MYSQL_DATABASE}_services"
    engine = create_engine(MYSQL.create_database(name))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE leftover (id INT)"))
    engine.dispose()
    engine = create_engine(MYSQL.create_database(name))  # again: dropped and created
    with engine.connect() as conn:
        assert conn.execute(text("SHOW TABLES")).all() == []
    engine.dispose()
    MYSQL.drop_database(name)
    root = create_engine(MYSQL.url("information_schema"))
    with root.connect() as conn:
        found = conn.execute(text("SELECT schema_name FROM schemata WHERE schema_name = :n"), {"n": name})
        assert found.all() == []
    root.dispose()


@pytest.mark.stack
def test_a_private_redis_with_aof_keeps_its_data_across_a_crash(tmp_path: Path):
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        time.sleep(1.5)  # the AOF is written once a second
        server.kill()
        server.start()
        assert redis.Redis.from_url(server.url).get("kept") == b"yes"
        assert (tmp_path / "redis" / "redis.log").exists()
    finally:
        server.stop()
    assert server.proc is None
