"""What the test modules share besides fixtures: the test backends and their names, the stack's
environment and processes, calls against a running stack, log reading and fabricated images.

``tests/conftest.py`` holds the fixtures; the backing services themselves (a private Redis, a
database on the running MariaDB, free ports) are :mod:`veilface.local.services`.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import numpy as np
import requests
from celery.result import AsyncResult
from PIL import Image

from veilface.config import load_settings
from veilface.local.services import MySQLServer, free_port, wait_for
from veilface.local.stack import SERVICES, Stack, service_env
from veilface.messaging.app import make_celery, send_signed
from veilface.messaging.signing import TaskSigner

# -- the backends and the names this session uses on them --------------------------------------

MYSQL_HOST = os.environ.get("VEILFACE_TEST_MYSQL_HOST", "127.0.0.1")
#: The test MariaDB, as root (the tests make their own databases on it).
MYSQL = MySQLServer(host=MYSQL_HOST)
#: Concurrent test sessions (several developers on one machine) must not share queues.
REDIS_URL = os.environ.get("VEILFACE_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{1 + os.getpid() % 15}")
MYSQL_DATABASE = f"veilface_test_{os.getpid()}"
ADMIN_KEY = "test-admin-" + uuid.uuid4().hex
#: The password of every service account this session makes (see ``MySQLServer.service_urls``).
SERVICE_PASSWORD = uuid.uuid4().hex
#: The request limits the session stacks turn off (0).
UNTHROTTLED = (
    "VEILFACE_RATE_LIMIT_PER_MINUTE",
    "VEILFACE_SUBJECT_VERIFY_PER_MINUTE",
    "VEILFACE_AUTH_FAILURES_PER_MINUTE",
)


@contextmanager
def database_from_before(backend: str, folder: Path, suffix: str, table: str, columns: Iterable[str]):
    """An engine on a database of today's schema less ``columns`` of ``table``, as one made before
    they were added, holding one gallery ``'old'``: on MariaDB (``backend == "mariadb"``, dropped
    after) or in a SQLite file in ``folder``."""
    from sqlalchemy import create_engine

    from veilface.store.db import create_schema

    name = f"{MYSQL_DATABASE}_{suffix}"
    url = MYSQL.create_database(name) if backend == "mariadb" else f"sqlite:///{folder / 'old.db'}"
    engine = create_engine(url)
    create_schema(engine)
    with engine.begin() as conn:
        for column in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.exec_driver_sql("INSERT INTO galleries (name, created_at) VALUES ('old', '2026-01-01 00:00:00')")
    try:
        yield engine
    finally:
        engine.dispose()
        if backend == "mariadb":
            MYSQL.drop_database(name)


# -- keys, the stack's environment and its processes --------------------------------------------


def new_key_set(folder: Path) -> Path:
    """Write a fresh CKKS key set, queue key and task key into ``folder``."""
    from veilface.crypto.keyfiles import generate_message_keys
    from veilface.crypto.params import DEFAULT_PARAMS
    from veilface.crypto.secret import generate_keyset

    generate_keyset(folder, DEFAULT_PARAMS)
    generate_message_keys(folder)
    return folder


def stack_env(var_dir: Path, key_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test stack: this process's own without ``VEILFACE_*``, then the
    stack's folders, ``ADMIN_KEY`` as bootstrap key, unthrottled requests and ``extra``."""
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


#: The log files of the services running now: a failing stack test shows their tails
#: (``pytest_runtest_makereport`` in ``tests/conftest.py``), so a CI log says what hung.
RUNNING_LOGS: list[Path] = []


@contextmanager
def logs_shown_on_failure(*paths: Path) -> Iterator[None]:
    """Register ``paths`` (log files, or folders of ``*.log``) in :data:`RUNNING_LOGS` meanwhile."""
    RUNNING_LOGS.extend(paths)
    try:
        yield
    finally:
        for path in paths:
            RUNNING_LOGS.remove(path)


def log_tails(lines: int = 40) -> Iterator[tuple[str, str]]:
    """``(path, last lines)`` of every log in :data:`RUNNING_LOGS`."""
    for entry in RUNNING_LOGS:
        for path in sorted(entry.glob("*.log")) if entry.is_dir() else [entry]:
            with suppress(OSError):
                tail = path.read_bytes().decode("utf-8", "replace").splitlines()[-lines:]
                yield str(path), "\n".join(tail)


def run_stack(env: dict[str, str], var_dir: Path, matchers: int = 1) -> Iterator[Stack]:
    """Start the stack on ``env`` (logs under ``var_dir``), yield it once ready, stop it after."""
    stack = Stack(env=env, bind=f"127.0.0.1:{free_port()}", matchers=matchers, log_dir=var_dir / "logs")
    stack.start()
    try:
        with logs_shown_on_failure(var_dir / "logs"):
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
        with logs_shown_on_failure(log_path):
            with suppress(TimeoutError):  # the test's first request then says what is wrong
                wait_for(lambda: _healthy(f"http://{bind}"), 60, "the gateway's /healthz", 0.3)
            yield f"http://{bind}"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Logs:
    """Reads what the stack's processes logged (``<name>.log`` in ``folder``) since :meth:`mark`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.offsets: dict[str, int] = {}

    def mark(self) -> None:
        self.offsets = {p.stem: p.stat().st_size for p in self.folder.glob("*.log")}

    def since_mark(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        if not path.exists():
            return ""
        with path.open("rb") as fh:
            fh.seek(self.offsets.get(name, 0))
            return fh.read().decode("utf-8", "replace")

    def who_received(self, task: str, names: list[str], timeout_s: float = 30) -> str:
        """The first of ``names`` whose log shows it received ``task`` since the mark."""
        needle = f"{task}["

        def found() -> str | None:
            return next((n for n in names if needle in self.since_mark(n)), None)

        return wait_for(found, timeout_s, f"a worker to receive {task}", 0.05)


# -- calls against a running stack ------------------------------------------------------------


def veilface_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m veilface ARGS`` under ``env``, its output captured; with ``check`` it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "veilface", *args], env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def cli_api_key(env: dict[str, str], *args: str) -> str:
    """A new API key from ``veilface keys create-api-key ARGS`` (the last line it prints)."""
    return veilface_cli(env, "keys", "create-api-key", *args).stdout.strip().splitlines()[-1]


def enroll_main_face(
    stack: Stack, headers: dict[str, str], photo: Path, gallery: str, subject: str | None = None
) -> None:
    """Enroll the main face of ``photo`` as ``subject`` (default: the name of its folder) into
    ``gallery``; asserts a 201."""
    r = requests.post(
        f"{stack.url}/v1/galleries/{gallery}/subjects/{subject or photo.parent.name}/faces",
        headers=headers,
        files=[("image", photo.read_bytes())],
        params={"face": "main"},
        timeout=120,
    )
    assert r.status_code == 201, r.text


def match_of_main_face(stack: Stack, headers: dict[str, str], photo: Path, gallery: str) -> str | None:
    """The identify decision for the main face of ``photo`` (listed first); asserts a 200."""
    r = requests.post(
        f"{stack.url}/v1/galleries/{gallery}/identify",
        headers=headers,
        files=[("image", photo.read_bytes())],
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()["faces"][0]["match"]


# -- fabricated images ----------------------------------------------------------------------


def encoded(im: Image.Image, fmt: str, **params) -> bytes:
    """``im`` saved as ``fmt`` (Pillow's save options in ``params``)."""
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload and CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming a ``width`` x ``height`` RGB image, then a little pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * (1 + 3 * 64) * 64, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    )


def faceless_jpeg() -> bytes:
    """A smooth noisy gradient: decodable, with no face in it."""
    rng = np.random.default_rng(7)
    gradient = np.linspace(0, 255, 320 * 240 * 3).reshape(240, 320, 3) + rng.normal(0, 3, (240, 320, 3))
    return encoded(Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8)), "JPEG")


# -- markers ----------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable)

#: Fixtures that start processes, by name, and the markers every test that uses one must carry.
MARKED_FIXTURES: dict[str, tuple[str, ...]] = {}


def needs_markers(*markers: str) -> Callable[[F], F]:
    """Declare that a fixture starts processes: a test that uses it, directly or through another
    fixture, must carry ``markers`` (``tests/conftest.py`` fails it in setup otherwise)."""

    def register(fixture: F) -> F:
        MARKED_FIXTURES[fixture.__name__] = markers
        return fixture

    return register


def gateway_sender(env: dict[str, str]) -> Callable[[str, list, str], AsyncResult]:
    """``send(task, args, queue)``: queue a task signed with the task key, as the gateway does."""
    settings = load_settings(env)
    celery = make_celery(settings)
    signer = TaskSigner.from_file(settings.task_key_path, settings.message_ttl_s)
    return lambda task, args, queue: send_signed(celery, signer, task, args, queue)


def mosaic(photos: list[Path], columns: int = 5, tile: int = 150) -> bytes:
    """The ``photos``, each cropped to ``tile`` pixels around its centre (where LFW puts the
    face), as one JPEG of ``columns`` tiles per row."""
    rows = -(-len(photos) // columns)
    canvas = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    for n, photo in enumerate(photos):
        with Image.open(photo) as im:
            width, height = im.size
            left, top = (width - tile) // 2, (height - tile) // 2
            crop = np.asarray(im.convert("RGB").crop((left, top, left + tile, top + tile)))
        row, col = divmod(n, columns)
        canvas[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = crop
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, "JPEG", quality=92)
    return out.getvalue()
