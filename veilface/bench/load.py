"""Load test: identify requests at rising concurrency against gunicorn and a 10,000-template gallery.

``python -m veilface.bench.load --gallery 10000 --out results/load.json`` starts the stack
(gunicorn gateway, embedder, he-matcher) on MariaDB and Redis on loopback, bulk-imports
``--gallery`` encrypted templates (random unit vectors packed with
:func:`veilface.search.packer.pack_block`, one template row per slot so that every slot is
live), enrolls ``--real`` LFW people over HTTP (folded into the packed blocks by a
compaction) so that answers can be checked, then sends identify requests from a bounded
thread pool at concurrency 1, 2, 4, ... until the p95 latency passes ``--p95-limit`` (at
least ``--min-steps`` steps). Each step sends a bounded number of requests under a time
limit. Last, it compares the throughput of one and two he-matcher workers at one
concurrency. Every answer is checked (top-1 subject); a request without an answer is
counted as lost.

MariaDB defaults to 127.0.0.1 (``--database-url``): the database is created, and dropped
at the end unless ``--keep``. Redis is a private ``redis-server`` on a free loopback port
unless ``--broker-url`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import requests
from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import make_url

from veilface.bench.stats import percentile
from veilface.config import load_settings
from veilface.crypto.params import DEFAULT_PARAMS
from veilface.local.services import MySQLServer, RedisServer
from veilface.local.stack import Stack
from veilface.messaging.app import make_celery, send_signed
from veilface.messaging.messages import MATCH_QUEUE, TASK_COMPACT
from veilface.messaging.signing import TaskSigner
from veilface.models.registry import ModelRegistry
from veilface.search.routing import owner
from veilface.store.db import create_schema, make_engine, session_factory, session_scope
from veilface.store.models import Gallery, SlotCounter, Subject, Template, utcnow

GALLERY = "load"


@dataclass
class Step:
    """One concurrency level: what was sent and how it went."""

    concurrency: int
    matchers: int
    requests: int
    ok: int
    correct: int
    statuses: dict[str, int]
    lost: int
    seconds: float
    throughput_rps: float
    p50_s: float
    p95_s: float
    p99_s: float
    mean_s: float
    error_rate: float
    #: The machine's 1-minute load average at the end of the step (2 cores: above 2 is contention).
    load_avg: float


def _people(lfw: Path, count: int) -> list[list[Path]]:
    people = [sorted(p.glob("*.jpg")) for p in sorted(lfw.iterdir()) if p.is_dir()]
    many = [p for p in people if len(p) >= 4]
    return many[:: max(1, len(many) // count)][:count]


def _gallery_splitting_blocks(sessions, model_version: str, blocks: int, matchers: list[str]) -> int:
    """Create the gallery; its id is chosen so that, with two matchers, each owns some blocks.

    Rendezvous hashing with only a couple of blocks is otherwise a coin toss, and the
    comparison of one and two matchers would measure the toss.
    """
    with session_scope(sessions) as session:
        for attempt in range(64):
            gallery = Gallery(name=f"{GALLERY}-candidate-{attempt}")
            session.add(gallery)
            session.flush()
            owners = {owner(matchers, f"{gallery.id}:{model_version}:{b}") for b in range(blocks)}
            if len(owners) == len(matchers) or blocks < len(matchers):
                gallery.name = GALLERY
                session.execute(delete(Gallery).where(Gallery.name.like(f"{GALLERY}-candidate-%")))
                return gallery.id
    raise RuntimeError("no gallery id splits the blocks")


def import_gallery(settings, count: int, seed: int = 0) -> tuple[int, str, float]:
    """Bulk-import ``count`` random templates as packed blocks with live template rows."""
    from veilface.crypto.public import PublicContext
    from veilface.search.packer import import_block

    started = time.perf_counter()
    model = ModelRegistry(settings).active()
    ctx = PublicContext.load(settings.public_context_path)
    engine = make_engine(settings)
    create_schema(engine)
    sessions = session_factory(engine)
    capacity = DEFAULT_PARAMS.block_capacity
    blocks = -(-count // capacity)
    host = socket.gethostname()
    gallery_id = _gallery_splitting_blocks(
        sessions, model.version, blocks, [f"matcher{i}@{host}" for i in (1, 2)]
    )
    rng = np.random.default_rng(seed)
    with session_scope(sessions) as session:
        now = utcnow()
        names = [f"synthetic-{i:05d}" for i in range(count)]
        session.execute(
            insert(Subject), [{"gallery_id": gallery_id, "name": n, "created_at": now} for n in names]
        )
        ids = dict(
            session.execute(select(Subject.name, Subject.id).where(Subject.gallery_id == gallery_id)).all()
        )
        session.execute(
            insert(Template),
            [
                {
                    "gallery_id": gallery_id,
                    "subject_id": ids[n],
                    "model_version": model.version,
                    "image_sha256": f"synthetic-{i}",
                    "block_no": i // capacity,
                    "slot": i % capacity,
                    "state": "packed",
                    "ciphertext": None,
                    "created_at": now,
                }
                for i, n in enumerate(names)
            ],
        )
        session.add(SlotCounter(gallery_id=gallery_id, model_version=model.version, next_slot=count))
    for block_no in range(blocks):
        n = min(capacity, count - block_no * capacity)
        templates = rng.normal(size=(n, model.dim))
        with session_scope(sessions) as session:
            import_block(ctx, session, gallery_id, model.version, block_no, templates, blocks=blocks)
        print(f"block {block_no}: {n} templates packed and written", flush=True)
    engine.dispose()
    return gallery_id, model.version, time.perf_counter() - started


class Client:
    """Identify requests against the stack, each answer checked against the expected subject."""

    def __init__(self, url: str, key: str, queries: list[tuple[str, bytes]]):
        self.url, self.headers, self.queries = url, {"X-API-Key": key}, queries
        self._next = 0
        self._lock = threading.Lock()

    def _query(self) -> tuple[str, bytes]:
        with self._lock:
            self._next += 1
            return self.queries[self._next % len(self.queries)]

    def identify(self) -> tuple[float, int | None, bool]:
        subject, image = self._query()
        started = time.perf_counter()
        try:
            r = requests.post(
                f"{self.url}/v1/galleries/{GALLERY}/identify",
                headers=self.headers,
                files=[("image", image)],
                timeout=180,
            )
        except requests.RequestException:
            return time.perf_counter() - started, None, False
        seconds = time.perf_counter() - started
        correct = False
        if r.status_code == 200:
            faces = r.json()["faces"]
            best = max(faces, key=lambda f: f["box"][2] * f["box"][3]) if faces else None
            correct = bool(best and best["candidates"]) and best["candidates"][0]["subject"] == subject
        return seconds, r.status_code, correct

    def step(self, concurrency: int, matchers: int, requests_per_step: int, time_limit_s: float) -> Step:
        """``requests_per_step`` requests from ``concurrency`` threads, stopped at ``time_limit_s``."""
        deadline = time.monotonic() + time_limit_s
        remaining = [requests_per_step]
        lock = threading.Lock()
        results: list[tuple[float, int | None, bool]] = []

        def worker() -> None:
            while time.monotonic() < deadline:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                outcome = self.identify()
                with lock:
                    results.append(outcome)

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(worker) for _ in range(concurrency)]:
                future.result()
        seconds = time.perf_counter() - started
        latencies = [r[0] for r in results if r[1] == 200]
        statuses: dict[str, int] = {}
        for _, status, _ in results:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        ok = statuses.get("200", 0)
        return Step(
            concurrency=concurrency,
            matchers=matchers,
            requests=len(results),
            ok=ok,
            correct=sum(r[2] for r in results),
            statuses=statuses,
            lost=statuses.get("None", 0),
            seconds=round(seconds, 2),
            throughput_rps=round(ok / seconds, 3),
            p50_s=round(percentile(latencies, 0.50), 3) if latencies else 0.0,
            p95_s=round(percentile(latencies, 0.95), 3) if latencies else 0.0,
            p99_s=round(percentile(latencies, 0.99), 3) if latencies else 0.0,
            mean_s=round(statistics.fmean(latencies), 3) if latencies else 0.0,
            error_rate=round(1 - ok / len(results), 4) if results else 1.0,
            load_avg=round(os.getloadavg()[0], 2),
        )


def _wait_matchers(stack: Stack, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        headers = {"X-API-Key": stack.env["VEILFACE_BOOTSTRAP_API_KEY"]}
        report = requests.get(f"{stack.url}/readyz", headers=headers, timeout=10).json()
        if len(report["checks"]["he_matcher"]["online"]) == count and report["ready"]:
            return
        time.sleep(1)
    raise TimeoutError(f"{count} matchers not online")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=10_000, help="Encrypted templates to import.")
    parser.add_argument("--real", type=int, default=8, help="LFW people enrolled over HTTP (the queries).")
    parser.add_argument("--steps", default="1,2,4,8,16", help="Concurrency levels, in order.")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--p95-limit", type=float, default=2.0, help="Stop rising once p95 passes this (s).")
    parser.add_argument("--requests-per-step", type=int, default=24)
    parser.add_argument("--step-time-limit", type=float, default=150.0)
    parser.add_argument(
        "--compare-concurrency", type=int, default=4, help="Where 1 and 2 matchers are compared."
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("VEILFACE_DATABASE_URL")
        or "mysql+mysqldb://root@127.0.0.1:3306/veilface_load?charset=utf8mb4",
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("VEILFACE_BROKER_URL"),
        help="Redis URL; default: a private redis-server on a free loopback port, for this run only.",
    )
    parser.add_argument("--bind", default="127.0.0.1:8095")
    parser.add_argument("--keep", action="store_true", help="Keep the database afterwards.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    load_at_start = round(os.getloadavg()[0], 2)

    var_dir = Path(tempfile.mkdtemp(prefix="veilface-load-"))
    private_redis = None
    if args.broker_url is None:
        private_redis = RedisServer(var_dir).start()
        args.broker_url = private_redis.url
    key = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEILFACE_")}
    env.update(
        VEILFACE_VAR_DIR=str(var_dir),
        VEILFACE_DATABASE_URL=args.database_url,
        VEILFACE_BROKER_URL=args.broker_url,
        VEILFACE_BOOTSTRAP_API_KEY=key,
        VEILFACE_SHARED_DIR=str(load_settings().shared_dir),
    )
    settings = load_settings(env)
    mysql, database = MySQLServer.from_url(args.database_url), make_url(args.database_url).database
    mysql.create_database(database)

    from veilface.crypto.keyfiles import generate_message_keys
    from veilface.crypto.secret import generate_keyset

    generate_keyset(settings.keys_path, DEFAULT_PARAMS)
    generate_message_keys(settings.keys_path)
    gallery_id, version, import_s = import_gallery(settings, args.gallery)
    print(f"imported {args.gallery} templates in {import_s:.1f} s", flush=True)

    stack = Stack(env=env, bind=args.bind, embedders=1, matchers=1, log_dir=var_dir / "logs")
    stack.start()
    steps: list[Step] = []
    comparison: list[Step] = []
    try:
        stack.wait_ready()
        people = _people(settings.data_dir / "lfw" / "images", args.real)
        client = Client(stack.url, key, [])
        for photos in people:
            r = requests.post(
                f"{stack.url}/v1/galleries/{GALLERY}/subjects/{photos[0].parent.name}/faces",
                headers=client.headers,
                files=[("image", photos[0].read_bytes())],
                params={"face": "main"},
                timeout=180,
            )
            r.raise_for_status()
            client.queries.extend((photos[0].parent.name, p.read_bytes()) for p in photos[1:4])
        signer = TaskSigner.from_file(settings.task_key_path, settings.message_ttl_s)
        send_signed(make_celery(settings), signer, TASK_COMPACT, [gallery_id, version], MATCH_QUEUE)
        engine = make_engine(settings)
        deadline = time.monotonic() + 300
        with engine.connect() as conn:
            pending = select(func.count(Template.id)).where(
                Template.gallery_id == gallery_id, Template.state == "delta"
            )
            while conn.scalar(pending):
                conn.rollback()
                if time.monotonic() > deadline:
                    raise TimeoutError("compaction did not finish")
                time.sleep(1)
        engine.dispose()
        print(f"enrolled and compacted {len(people)} real people; warming up", flush=True)
        client.step(1, 1, 2, 300)  # the matcher loads its blocks

        for concurrency in [int(c) for c in args.steps.split(",")]:
            step = client.step(
                concurrency, 1, max(args.requests_per_step, 2 * concurrency), args.step_time_limit
            )
            steps.append(step)
            print(json.dumps(asdict(step)), flush=True)
            if step.p95_s > args.p95_limit and len(steps) >= args.min_steps:
                break

        comparison.append(
            next((s for s in steps if s.concurrency == args.compare_concurrency), None)
            or client.step(args.compare_concurrency, 1, args.requests_per_step, args.step_time_limit)
        )
        stack.start_worker("matcher", 2)
        _wait_matchers(stack, 2)
        client.step(2, 2, 4, 300)  # the second matcher loads its blocks, the first drops them
        step = client.step(args.compare_concurrency, 2, args.requests_per_step, args.step_time_limit)
        comparison.append(step)
        print(json.dumps(asdict(step)), flush=True)
    finally:
        stack.stop()
        if private_redis is not None:
            private_redis.stop()
        if not args.keep:
            mysql.drop_database(database)

    report = {
        "command": "python -m veilface.bench.load " + " ".join(sys.argv[1:]),
        "gallery_templates": args.gallery,
        "real_subjects": args.real,
        "blocks": -(-args.gallery // DEFAULT_PARAMS.block_capacity),
        "model_version": version,
        "import_s": round(import_s, 1),
        "p95_limit_s": args.p95_limit,
        "steps": [asdict(s) for s in steps],
        "matchers_compared_at_concurrency": args.compare_concurrency,
        "one_vs_two_matchers": [asdict(s) for s in comparison],
        "lost": sum(s.lost for s in steps + comparison),
        "statuses_other_than_200_429_503": sum(
            n
            for s in steps + comparison
            for code, n in s.statuses.items()
            if code not in ("200", "429", "503")
        ),
        "wall_s": round(time.perf_counter() - started, 1),
        "load_avg_at_start": load_at_start,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "stack": {
            "gateway": "gunicorn gthread, 2 processes x 4 threads",
            "embedders": 1,
            "database": "MariaDB (loopback)",
            "broker": "Redis (loopback)",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
