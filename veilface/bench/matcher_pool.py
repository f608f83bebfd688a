"""Matcher processes for :mod:`veilface.bench.he`: each a real :class:`Shard` loaded from the database.

Every process is started with the ``spawn`` method, holds public keys only, loads the blocks it
is given exactly as an he-matcher does (:meth:`Shard.refresh`) and then scores each probe it is
sent, answering with the score results and the seconds its search took. The parent sends one
probe to all of them at once and waits for the last answer, as the gateway does.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from veilface.config import load_settings
from veilface.crypto.public import PublicContext
from veilface.search.results import ScoreResult
from veilface.search.shard import Shard
from veilface.store.db import make_engine, session_factory, session_scope


def resident_kib() -> float:
    """Resident set size of this process in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return float("nan")


@dataclass(frozen=True)
class ShardSpec:
    """What one matcher process loads: a gallery's blocks from the database at ``database_url``."""

    public_context: Path
    database_url: str
    gallery_id: int
    model_version: str
    dim: int
    blocks: tuple[int, ...]


@dataclass(frozen=True)
class Loaded:
    """A matcher process after its load: what it holds and what holding it cost."""

    templates: int
    load_s: float
    rss_before_bytes: int
    rss_after_bytes: int
    resident_bytes: int

    @property
    def rss_bytes_per_template(self) -> float:
        """Growth of the resident set over the load, per template held."""
        return (self.rss_after_bytes - self.rss_before_bytes) / max(1, self.templates)


def _serve(spec: ShardSpec, conn: Connection) -> None:
    """Body of a matcher process: load the shard, report, then answer probes until ``None``."""
    ctx = PublicContext.load(spec.public_context)
    settings = load_settings(database_url=spec.database_url)
    factory = session_factory(make_engine(settings))
    shard = Shard(ctx, spec.gallery_id, spec.model_version, spec.dim, spec.blocks)
    before = resident_kib()
    start = time.perf_counter()
    with session_scope(factory) as session:
        shard.refresh(session)
    load_s = time.perf_counter() - start
    after = resident_kib()
    conn.send(
        Loaded(shard.template_count, load_s, int(before * 1024), int(after * 1024), shard.resident_bytes)
    )
    while (probe := conn.recv()) is not None:
        start = time.perf_counter()
        results = shard.search(probe)
        conn.send((results, time.perf_counter() - start))
    conn.close()


class MatcherPool:
    """``len(specs)`` matcher processes, each holding the blocks of its :class:`ShardSpec`.

    Use as a context manager; entering starts the processes and waits until all have loaded.
    """

    def __init__(self, specs: Sequence[ShardSpec]):
        self.specs = list(specs)
        self.loaded: list[Loaded] = []
        self.load_s = 0.0
        self._procs: list[multiprocessing.Process] = []
        self._conns: list[Connection] = []

    def __enter__(self) -> MatcherPool:
        spawn = multiprocessing.get_context("spawn")
        start = time.perf_counter()
        try:
            for spec in self.specs:
                parent, child = spawn.Pipe()
                proc = spawn.Process(target=_serve, args=(spec, child), daemon=True)
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
            self.loaded = [conn.recv() for conn in self._conns]
        except BaseException:
            self.close()
            raise
        self.load_s = time.perf_counter() - start
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, probe: bytes) -> tuple[list[ScoreResult], float, list[float]]:
        """Score ``probe`` on every process at once: all results, the wall time until the last
        answer, and each process's own search time."""
        start = time.perf_counter()
        for conn in self._conns:
            conn.send(probe)
        answers = [conn.recv() for conn in self._conns]
        wall = time.perf_counter() - start
        return [r for results, _ in answers for r in results], wall, [seconds for _, seconds in answers]

    def close(self) -> None:
        """Ask every process to stop and wait for it."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """``p50``, ``mean`` and ``max`` of a list of timings."""
    return {"p50": statistics.median(seconds), "mean": statistics.fmean(seconds), "max": max(seconds)}
