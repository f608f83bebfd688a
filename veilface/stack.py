"""Run the whole stack locally as real separate processes (``make run``; tests and demo too).

The gateway runs under gunicorn; each embedder and he-matcher is its own Celery worker
process. With no settings the stack uses the embedded defaults (SQLite file, SQLite-backed
queue); with ``VEILFACE_DATABASE_URL`` and ``VEILFACE_BROKER_URL`` the same processes run
on MySQL/MariaDB and Redis.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from veilface.config import Settings, load_settings, path_environ

SERVICES = Path(__file__).resolve().parent.parent / "services"


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def ensure_keys(settings: Settings, env: dict[str, str]) -> None:
    """Create the key set on first start (``veilface keys init`` is idempotent)."""
    key_files = (settings.secret_context_path, settings.queue_key_path, settings.task_key_path)
    if not all(path.exists() for path in key_files):
        subprocess.run([sys.executable, "-m", "veilface", "keys", "init"], env=env, check=True)


@dataclass
class Stack:
    """The gateway, ``embedders`` embedder workers and ``matchers`` he-matcher workers."""

    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    bind: str = "127.0.0.1:8080"
    embedders: int = 1
    matchers: int = 1
    log_dir: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.bind}"

    def _spawn(self, name: str, argv: list[str], cwd: Path) -> None:
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.processes[name] = subprocess.Popen(
            argv, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start_worker(self, kind: str, index: int) -> str:
        """Start one Celery worker of ``kind`` ('embedder' or 'matcher'); returns its name."""
        folder, queue = {"embedder": ("embedder", "embed"), "matcher": ("he-matcher", "match")}[kind]
        name = f"{kind}{index}"
        argv = [
            _bin("celery"),
            "-A",
            "tasks",
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
        self._spawn(name, argv, SERVICES / folder)
        return name

    def start(self) -> Stack:
        settings = load_settings(self.env)
        self.env.update(path_environ(settings))
        ensure_keys(settings, self.env)
        self.env["VEILFACE_BIND"] = self.bind
        self._spawn("gateway", [_bin("gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], SERVICES / "gateway")
        for i in range(1, self.embedders + 1):
            self.start_worker("embedder", i)
        for i in range(1, self.matchers + 1):
            self.start_worker("matcher", i)
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> dict:
        """Poll ``/readyz`` until every check passes; raise with the last report otherwise."""
        deadline, report = time.monotonic() + timeout_s, {}
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}")
            try:
                response = requests.get(f"{self.url}/readyz", timeout=5)
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

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.processes.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default=os.environ.get("VEILFACE_BIND", "127.0.0.1:8080"))
    parser.add_argument("--embedders", type=int, default=1)
    parser.add_argument("--matchers", type=int, default=1)
    args = parser.parse_args()
    settings = load_settings()
    stack = Stack(
        bind=args.bind, embedders=args.embedders, matchers=args.matchers, log_dir=settings.var_dir / "logs"
    )
    stack.start()
    try:
        stack.wait_ready()
        print(f"veilface is up on {stack.url} (logs in {settings.var_dir / 'logs'}); Ctrl-C stops it")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
