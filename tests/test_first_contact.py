"""What a new user meets first: the stack stops cleanly on a signal, ``/`` leads somewhere, and
a MySQL URL without its driver says what to install."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support import stack_env
from veilface import errors
from veilface.config import load_settings
from veilface.local.services import free_port
from veilface.store.db import MYSQL_DRIVER_HINT, make_engine

STOP_TIMEOUT_S = 30
REPO = Path(__file__).resolve().parent.parent


def _processes_with(var_dir: Path) -> list[int]:
    """PIDs of every process whose environment names ``var_dir`` (the stack and its children)."""
    marker = f"VEILFACE_VAR_DIR={var_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _port_free(port: int) -> bool:
    """Whether a new server could listen on ``port`` (SO_REUSEADDR, as gunicorn binds: the
    test's own closed connections may linger in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_stack(tmp_path: Path, key_dir: Path) -> tuple[subprocess.Popen, Path, int]:
    var_dir, port = tmp_path / "var", free_port()
    env = stack_env(var_dir, key_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "veilface.local.stack", "--bind", f"127.0.0.1:{port}", "--stop-timeout", "20"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, var_dir, port


def _assert_stopped_cleanly(proc: subprocess.Popen, var_dir: Path, port: int) -> str:
    output, _ = proc.communicate(timeout=STOP_TIMEOUT_S + 10)
    assert proc.returncode == 0, output
    assert _processes_with(var_dir) == [], output
    assert _port_free(port), output
    return output


@pytest.mark.stack
def test_sigterm_during_start_up_stops_every_child(tmp_path: Path, key_dir: Path):
    proc, var_dir, port = _start_stack(tmp_path, key_dir)
    # The stack opens a child's log just before it forks the child, so count the children
    # themselves: gateway, embedder and matcher.
    deadline, children = time.monotonic() + 60, []
    while len(children) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        children = [pid for pid in _processes_with(var_dir) if pid != proc.pid]
    assert len(children) >= 3, f"the stack should have started its processes by now: {children}"
    proc.send_signal(signal.SIGTERM)
    output = _assert_stopped_cleanly(proc, var_dir, port)
    assert "SIGTERM: stopping the stack" in output
    assert "veilface is up" not in output


@pytest.mark.stack
def test_sigterm_after_ready_stops_every_child_and_the_front_door_works(tmp_path: Path, key_dir: Path):
    proc, var_dir, port = _start_stack(tmp_path, key_dir)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("veilface is up"):
            break
    assert lines and lines[-1].startswith("veilface is up"), "".join(lines)
    url = f"http://127.0.0.1:{port}"
    assert f"console {url}/console/" in lines[-1]

    browser = requests.get(f"{url}/", headers={"Accept": "text/html,*/*;q=0.8"}, allow_redirects=False)
    assert browser.status_code == 302
    assert browser.headers["Location"].endswith("/console/")
    plain = requests.get(f"{url}/", headers={"Accept": "*/*"}, allow_redirects=False)
    assert plain.status_code == 302
    index = requests.get(f"{url}/", headers={"Accept": "application/json"})
    assert index.status_code == 200
    body = index.json()
    assert body["name"] == "veilface" and body["version"]
    assert body["links"] == {"openapi": "/openapi.json", "console": "/console/", "healthz": "/healthz"}
    assert requests.get(f"{url}{body['links']['openapi']}").json()["paths"]["/"]

    proc.send_signal(signal.SIGTERM)
    output = _assert_stopped_cleanly(proc, var_dir, port)
    assert "SIGTERM: stopping the stack" in output


@pytest.mark.stack
def test_a_child_that_ignores_sigterm_is_killed_and_the_exit_status_says_so(tmp_path: Path):
    """The stop timeout bounds the stop; a child that had to be killed makes it exit non-zero."""
    from veilface.local.stack import Stack

    stack = Stack(env=dict(os.environ), log_dir=tmp_path)
    stack._spawn(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        ],
        tmp_path,
        "stubborn",
    )
    time.sleep(0.5)  # let it install its handler
    pid = stack.processes["stubborn"].pid
    started = time.monotonic()
    assert stack.stop(timeout_s=1.0) is False
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_mysql_url_without_the_driver_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # as if mysqlclient were not installed
    settings = load_settings({"VEILFACE_DATABASE_URL": "mysql+mysqldb://veilface@127.0.0.1:3306/veilface"})
    with pytest.raises(errors.MissingDriver) as raised:
        make_engine(settings)
    assert raised.value.message == MYSQL_DRIVER_HINT
    assert "libmariadb-dev pkg-config" in MYSQL_DRIVER_HINT and "veilface[mysql]" in MYSQL_DRIVER_HINT


@pytest.mark.install
def test_the_base_install_and_the_demo_need_no_mysql_client_library(tmp_path: Path):
    """A fresh venv on a machine without the MariaDB client library (hidden from pkg-config, pip's
    cache off) installs the package with the ``server`` extra and imports what ``make demo`` runs;
    ``make install-mysql`` then stops with one line naming the system packages, not a pip traceback."""
    venv, no_libs = tmp_path / "venv", tmp_path / "no-pkg-config"
    no_libs.mkdir()
    env = {**os.environ, "PKG_CONFIG_LIBDIR": str(no_libs), "PKG_CONFIG_PATH": "", "PIP_NO_CACHE_DIR": "1"}
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{REPO}[server]"], env=env, check=True, cwd=tmp_path
    )

    demo_path = (
        "import veilface.local.demo, veilface.local.stack, veilface.api, veilface.cli, veilface.face.pipeline"
    )
    subprocess.run([python, "-c", demo_path], env=env, check=True, cwd=tmp_path)
    missing = subprocess.run([python, "-c", "import MySQLdb"], env=env, capture_output=True, cwd=tmp_path)
    assert missing.returncode != 0, "the base install must not bring the MySQL driver"

    (venv / ".installed").touch()  # the server install is done: make goes straight to the driver
    make = subprocess.run(
        ["make", "-s", "-C", str(REPO), f"VENV={venv}", "install-mysql"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert make.returncode != 0
    lines = make.stderr.strip().splitlines()
    assert "libmariadb-dev pkg-config" in lines[0], make.stderr
    assert "Traceback" not in make.stderr and "Can not find valid pkg-config name" not in make.stderr
