"""Spreading packed blocks over the live he-matcher workers (rendezvous hashing).

Each block goes to the live matcher with the highest hash of ``(worker, gallery, block)``.
When a matcher joins, only the blocks it now wins move to it; the others keep theirs
cached, so adding a worker adds throughput without restarting or reloading the rest.
A gallery held whole by one matcher has the faces of a search dealt over the idle ones
(:func:`spread_probes`).
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


def spread_probes(
    assignment: dict[str, list[T]], probes: int, key: str
) -> list[tuple[str, list[T], tuple[int, ...]]]:
    """``(worker, items, probe indices)`` to send: who scores which probes of one request.

    Each worker with items in ``assignment`` scores every probe on them, unless one worker
    owns every item and others own none (a gallery smaller than the matchers): its probes
    are then dealt in turn over it and the idle workers, in their rendezvous order for
    ``key`` (the gallery: always the same helpers), each helper scoring its probes on all
    the items. The faces of one photo are then scored in parallel, at the price of a copy
    of that gallery in the helpers' memory; a single probe stays with the owner.
    """
    busy = {w: items for w, items in assignment.items() if items}
    idle = sorted((w for w in assignment if w not in busy), key=lambda w: _weight(w, key), reverse=True)
    if len(busy) != 1 or not idle or probes < 2:
        return [(w, items, tuple(range(probes))) for w, items in busy.items()]
    (items,) = busy.values()
    lanes = [*busy, *idle][:probes]
    return [(w, items, tuple(range(n, probes, len(lanes)))) for n, w in enumerate(lanes)]
