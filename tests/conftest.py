"""Fixtures that build real things: MariaDB and Redis, a key set, the stack as processes.

The helpers they use live in ``tests/support.py``; a fixture that starts processes declares the
markers its tests must carry (``support.needs_markers``), and a test without them fails in setup.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import (
    ADMIN_KEY,
    MARKED_FIXTURES,
    MYSQL,
    MYSQL_DATABASE,
    REDIS_URL,
    SERVICE_PASSWORD,
    log_tails,
    needs_markers,
    new_key_set,
    run_stack,
    stack_env,
)
from veilface.config import load_settings
from veilface.local.stack import Stack

#: Without the trainer extra (torch) the trainer's tests cannot even be imported: ``make test``
#: installs it, ``make test-fast`` does not need it.
collect_ignore = [] if importlib.util.find_spec("torch") else ["test_train.py"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test that uses a process-starting fixture without that fixture's markers, before
    anything starts: ``make test-fast`` deselects by marker, so the marking must not rot."""
    missing = [
        f"{name} needs @pytest.mark.{marker}"
        for name in getattr(item, "fixturenames", ())
        for marker in MARKED_FIXTURES.get(name, ())
        if item.get_closest_marker(marker) is None
    ]
    if missing:
        pytest.fail(f"{item.nodeid}: fixture {'; '.join(missing)}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failing stack or faults test also shows the tails of the running services' logs and the MariaDB
    statements that have run for more than 5 s: what a hang on CI needs to be understood."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not any(item.get_closest_marker(m) for m in ("stack", "faults")):
        return
    for path, tail in log_tails():
        report.sections.append((f"log {path}", tail))
    try:
        slow = MYSQL.execute(
            "SELECT id, db, command, time, state, LEFT(info, 200) FROM information_schema.processlist "
            "WHERE command <> 'Sleep' AND time > 5"
        )
    except Exception as exc:  # diagnostics only: the test's own failure is what counts
        slow = [("processlist unavailable", repr(exc))]
    report.sections.append(("MariaDB statements running > 5 s", "\n".join(map(str, slow)) or "none"))


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


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory) -> Path:
    """One key set (CKKS, queue and task keys) for the whole session (key generation takes seconds)."""
    return new_key_set(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def mysql_redis_env(tmp_path_factory, key_dir: Path) -> Iterator[dict[str, str]]:
    """Production backends: a fresh MariaDB database and a flushed Redis database.

    ``VEILFACE_DATABASE_URL`` is root's (the migration and the tests' own looks); the gateway and
    the workers each connect with their own least-privilege account (see ``MySQLServer.service_urls``).
    """
    redis.Redis.from_url(REDIS_URL).flushdb()
    var_dir = tmp_path_factory.mktemp("var-mysql")
    yield stack_env(
        var_dir,
        key_dir,
        VEILFACE_DATABASE_URL=MYSQL.create_database(MYSQL_DATABASE),
        VEILFACE_BROKER_URL=REDIS_URL,
        **MYSQL.service_urls(MYSQL_DATABASE, SERVICE_PASSWORD),
    )
    MYSQL.drop_database(MYSQL_DATABASE)


@pytest.fixture(scope="session")
@needs_markers("stack")
def stack(mysql_redis_env: dict[str, str]) -> Iterator[Stack]:
    """The production stack (gunicorn gateway, embedder, he-matcher) on MariaDB + Redis."""
    yield from run_stack(mysql_redis_env, Path(mysql_redis_env["VEILFACE_VAR_DIR"]))


@pytest.fixture(scope="session")
@needs_markers("stack")
def embedded_stack(tmp_path_factory, key_dir: Path) -> Iterator[Stack]:
    """The stack on the embedded defaults: SQLite file and the filesystem queue."""
    var_dir = tmp_path_factory.mktemp("var-embedded")
    yield from run_stack(stack_env(var_dir, key_dir), var_dir)


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"X-API-Key": ADMIN_KEY}
