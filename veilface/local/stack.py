"""Run the whole stack locally as real separate processes (``make run``; tests and demo too).

The gateway runs under gunicorn; each embedder and he-matcher is its own Celery worker
process. With no settings the stack uses the embedded defaults (SQLite file, SQLite-backed
queue); with ``VEILFACE_DATABASE_URL`` and ``VEILFACE_BROKER_URL`` the same processes run
on MySQL/MariaDB and Redis. Before starting them the stack runs ``veilface db migrate`` with
``VEILFACE_DATABASE_URL``; a service given an account of its own
(``VEILFACE_GATEWAY_DATABASE_URL``, ...) connects with that one and sees no other URL.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from veilface import errors
from veilface.config import Settings, load_settings, path_environ

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "services"
#: The Celery app module and the queue of each kind of worker.
WORKERS = {
    "embedder": ("veilface.workers.embedder", "embed"),
    "matcher": ("veilface.workers.matcher", "match"),
}

log = logging.getLogger(__name__)

#: The signals that stop the stack: what systemd, docker, supervisord, ``kill`` and Ctrl-C send.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _unblock_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def ensure_keys(settings: Settings, env: dict[str, str]) -> None:
    """Create the key set on first start (``veilface keys init`` is idempotent)."""
    key_files = (settings.secret_context_path, settings.queue_key_path, settings.task_key_path)
    if not all(path.exists() for path in key_files):
        subprocess.run([sys.executable, "-m", "veilface", "keys", "init"], env=env, check=True)


def migrate(env: dict[str, str]) -> None:
    """Create the schema and the services' accounts (``veilface db migrate`` is idempotent)."""
    subprocess.run([sys.executable, "-m", "veilface", "db", "migrate"], env=env, check=True)


def service_env(env: dict[str, str], service: str) -> dict[str, str]:
    """``env`` for one service: its own database URL, if it has one, and no other service's."""
    urls = load_settings(env).service_database_urls
    env = {k: v for k, v in env.items() if k not in {f"VEILFACE_{s.upper()}_DATABASE_URL" for s in urls}}
    if service in urls:
        env["VEILFACE_DATABASE_URL"] = urls[service]
    return env


#: He-matchers a stack starts unless told otherwise: the second one scores in parallel on the
#: second core of a small machine, both the blocks of a gallery past one block and the faces of
#: a photo searched in a smaller gallery (:func:`veilface.search.routing.spread_probes`).
DEFAULT_MATCHERS = 2


@dataclass
class Stack:
    """The gateway, ``embedders`` embedder workers and ``matchers`` he-matcher workers."""

    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    bind: str = "127.0.0.1:8080"
    embedders: int = 1
    matchers: int = DEFAULT_MATCHERS
    log_dir: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.bind}"

    def _spawn(self, name: str, argv: list[str], cwd: Path, service: str) -> None:
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        # A stop signal waits until the child is recorded (else it could outlive the stack);
        # the child itself starts with the signals unblocked.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.processes[name] = subprocess.Popen(
                argv,
                cwd=cwd,
                env=service_env(self.env, service),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_unblock_stop_signals,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def start_worker(self, kind: str, index: int) -> str:
        """Start one Celery worker of ``kind`` ('embedder' or 'matcher'); returns its name."""
        module, queue = WORKERS[kind]
        name = f"{kind}{index}"
        argv = [
            _bin("celery"),
            "-A",
            module,
            "worker",
            "-Q",
            queue,
            "--pool",
            "solo",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ]
        self._spawn(name, argv, REPO, kind)
        return name

    def start(self) -> Stack:
        settings = load_settings(self.env)
        self.env.update(path_environ(settings))
        ensure_keys(settings, self.env)
        migrate(self.env)
        self.env["VEILFACE_BIND"] = self.bind
        gunicorn = [_bin("gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
        self._spawn("gateway", gunicorn, SERVICES / "gateway", "gateway")
        for i in range(1, self.embedders + 1):
            self.start_worker("embedder", i)
        for i in range(1, self.matchers + 1):
            self.start_worker("matcher", i)
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> dict:
        """Poll ``/readyz`` until every check passes; raise with the last report otherwise.

        With a bootstrap key in the environment the report has every check, else only ``ready``.
        """
        key = self.env.get("VEILFACE_BOOTSTRAP_API_KEY")
        headers = {"X-API-Key": key} if key else {}
        deadline, report = time.monotonic() + timeout_s, {}
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}")
            try:
                response = requests.get(f"{self.url}/readyz", headers=headers, timeout=5)
                report = response.json()
                if response.status_code == 200:
                    return report
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"stack not ready after {timeout_s:.0f} s: {report}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM every process group, SIGKILL those still alive after ``timeout_s`` in all.

        Returns whether every process stopped by itself (``False`` when one had to be killed).
        """
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline, clean = time.monotonic() + timeout_s, True
        for name, proc in self.processes.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killed", name, timeout_s)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                clean = False
        self.processes.clear()
        return clean


class StopRequested(Exception):
    """A stop signal (SIGTERM, SIGINT or SIGHUP) arrived."""


def raise_stop(signum: int, _frame) -> None:
    """Signal handler: raise :class:`StopRequested`, so that every ``finally`` on the way runs."""
    raise StopRequested(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default=os.environ.get("VEILFACE_BIND", "127.0.0.1:8080"))
    parser.add_argument("--embedders", type=int, default=1)
    parser.add_argument("--matchers", type=int, default=DEFAULT_MATCHERS)
    parser.add_argument("--stop-timeout", type=float, default=30.0, help="seconds before a child is killed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings()
    stack = Stack(
        bind=args.bind, embedders=args.embedders, matchers=args.matchers, log_dir=settings.var_dir / "logs"
    )
    # Handlers first, so that a signal during start-up stops what has started so far. A process
    # is recorded as soon as Popen returns, so the ``finally`` below finds every child.
    for signum in STOP_SIGNALS:
        signal.signal(signum, raise_stop)
    status = 0
    try:
        stack.start()
        stack.wait_ready()
        print(f"veilface is up: console {stack.url}/console/, API {stack.url}/v1 (logs in {stack.log_dir})")
        print("Ctrl-C or SIGTERM stops it", flush=True)
        while True:
            signal.pause()
    except StopRequested as stop:
        log.info("%s: stopping the stack", stop)
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError, errors.VeilfaceError) as exc:
        log.error("veilface did not start: %s", exc)
        status = 1
    finally:
        for signum in STOP_SIGNALS:  # a second signal must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        if not stack.stop(args.stop_timeout):
            status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
