"""Finding what must never be stored: plaintext embeddings, photo bytes, key bytes, scores.

:func:`leak` looks into one blob (and the base64 or JSON inside it, as Celery messages wrap
it); :func:`scan_dump` runs it over every MariaDB row, every Redis value and every file of
the given folders, as the dump tests of ``tests/test_e2e.py`` and ``tests/test_client_e2e.py`` do.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import redis
from sqlalchemy import create_engine, inspect, text


def contains_vector(buf: bytes, vectors: np.ndarray, tol: float = 1e-3, run: int = 16) -> bool:
    """Whether ``buf`` holds ``run`` consecutive components of any vector as float32/64.

    Each vector is looked for by its anchor, its largest component among the first ``run``: only a
    value of an anchor's magnitude can be one, which rules out nearly every position at once.
    """
    heads = vectors[:, :run].astype(np.float64)
    anchor_at = np.abs(heads).argmax(axis=1)
    anchors = heads[np.arange(len(heads)), anchor_at]
    smallest, largest = float(np.abs(anchors).min()) - tol, float(np.abs(anchors).max()) + tol
    steps = np.arange(run)
    for dtype, width in ((np.float32, 4), (np.float64, 8)):
        for offset in range(width):
            count = (len(buf) - offset) // width
            if count < run:
                continue
            values = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
            with np.errstate(invalid="ignore", over="ignore"):
                magnitude = np.abs(values)
                found = np.flatnonzero((magnitude >= smallest) & (magnitude <= largest))
                near = values[found].astype(np.float64)
                for head, at, anchor in zip(heads, anchor_at, anchors, strict=True):
                    starts = found[np.abs(near - anchor) < tol] - at
                    starts = starts[(starts >= 0) & (starts <= count - run)]
                    windows = values[starts[:, None] + steps].astype(np.float64)
                    if np.any(np.all(np.abs(windows - head) < tol, axis=1)):
                        return True
    return False


def contains_vector_text(content: str, vectors: np.ndarray, tol: float = 1e-3, run: int = 16) -> bool:
    numbers = [float(x) for x in re.findall(r"-?\d+\.\d+(?:[eE]-?\d+)?", content)]
    if len(numbers) < run:
        return False
    values = np.array(numbers)
    return contains_vector(values.astype(np.float64).tobytes(), vectors, tol, run)


def expand(blob: bytes, depth: int = 3) -> list[bytes]:
    """``blob`` plus whatever base64 or JSON it carries, a few levels deep (Celery messages)."""
    found = [blob]
    if depth == 0:
        return found
    for token in re.findall(rb"[A-Za-z0-9+/=]{64,}", blob):
        try:
            decoded = base64.b64decode(token, validate=True)
        except ValueError:
            continue
        found.extend(expand(decoded, depth - 1))
    return found


def needles(files: list[Path], width: int = 64) -> list[bytes]:
    """Three ``width``-byte windows of each file: finding one means that file's content was stored."""
    needles = []
    for path in files:
        data = path.read_bytes()
        needles.extend(data[k : k + width] for k in (len(data) // 4, len(data) // 2, 3 * len(data) // 4))
    return needles


def leak(blob: bytes, vectors: np.ndarray, needles: list[bytes]) -> str | None:
    """What ``blob`` (or base64 or JSON inside it) leaks: a plaintext embedding, a needle, or nothing."""
    for part in expand(blob):
        if contains_vector(part, vectors):
            return "a plaintext embedding"
        try:
            if contains_vector_text(part.decode("utf-8"), vectors):
                return "a plaintext embedding (text)"
        except UnicodeDecodeError:
            pass
        if any(needle in part for needle in needles):
            return "part of a photo or of the secret key"
    return None


def _redis_values(url: str) -> Iterator[tuple[str, bytes]]:
    client = redis.Redis.from_url(url)
    readers = {
        "string": lambda k: [client.get(k)],
        "list": lambda k: client.lrange(k, 0, -1),
        "hash": lambda k: list(client.hgetall(k).values()),
        "set": lambda k: list(client.smembers(k)),
        "zset": lambda k: client.zrange(k, 0, -1),
    }
    for key in client.scan_iter(count=500):
        for value in readers.get(client.type(key).decode(), lambda k: [])(key):
            yield f"Redis key {key!r}", value or b""


def _database_values(url: str) -> Iterator[tuple[str, bytes]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            for table in inspect(engine).get_table_names():
                for row in conn.execute(text(f"SELECT * FROM `{table}`")):
                    for value in row:
                        yield f"table {table}", value if isinstance(value, bytes) else str(value).encode()
    finally:
        engine.dispose()


def scan_dump(
    vectors: np.ndarray, needles: list[bytes], *, database_url: str, redis_url: str, files: list[Path]
) -> tuple[int, list[str]]:
    """How many places were looked at, and every leak found, each as "what in where": every row
    of the database, every value of the Redis database and every file in ``files``."""
    places = [
        *_database_values(database_url),
        *_redis_values(redis_url),
        *((str(path), path.read_bytes()) for path in files),
    ]
    found = [f"{what} in {where}" for where, blob in places if (what := leak(blob, vectors, needles))]
    return len(places), found
