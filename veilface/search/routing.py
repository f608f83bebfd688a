"""Spreading packed blocks over the live he-matcher workers (rendezvous hashing).

Each block goes to the live matcher with the highest hash of ``(worker, gallery, block)``.
When a matcher joins, only the blocks it now wins move to it; the others keep theirs
cached, so adding a worker adds throughput without restarting or reloading the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def _weight(worker: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{worker}|{key}".encode(), digest_size=8).digest(), "big")


def owner(workers: Sequence[str], key: str) -> str:
    """The worker that owns ``key`` among ``workers`` (non-empty)."""
    return max(workers, key=lambda w: _weight(w, key))


def assign(workers: Sequence[str], items: Iterable[T], key: Callable[[T], str] = str) -> dict[str, list[T]]:
    """``worker -> items it owns`` (by ``key(item)``), for every worker, possibly empty."""
    plan: dict[str, list[T]] = {w: [] for w in workers}
    for item in items:
        plan[owner(workers, key(item))].append(item)
    return plan
