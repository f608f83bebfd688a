"""Gateway side, pure numpy: turn decrypted score vectors into the top-k templates."""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Mapping

import numpy as np

from veilface.crypto.layout import BlockLayout
from veilface.search.results import ScoreResult


def top_k(
    decrypted: Iterable[tuple[ScoreResult, np.ndarray]],
    live: Mapping[tuple[int, int], Hashable],
    k: int,
    slots_per_ciphertext: int,
) -> list[tuple[Hashable, float]]:
    """Best ``k`` distinct ``(identifier, score)`` pairs, highest score first.

    ``decrypted`` pairs each result with its decrypted slot vector; ``live`` maps
    ``(block_no, slot)`` of every live template to its identifier, so tombstoned and
    empty slots (absent from ``live``) never rank. Identifiers may repeat (a subject with
    several templates): each ranks once, with its best score. ``slots_per_ciphertext``
    is the context's slot count.
    """
    best: dict[Hashable, float] = {}
    for result, vector in decrypted:
        layout = BlockLayout(slots_per_ciphertext, result.dim)
        slots = np.asarray(result.slots, dtype=np.int64)
        if slots.size == 0:
            continue
        scores = layout.slot_scores(vector, slots)
        found: set[Hashable] = set()
        for index in np.argsort(-scores, kind="stable"):
            template = live.get((result.block_no, int(slots[index])))
            if template is None or template in found:
                continue
            found.add(template)
            best[template] = max(best.get(template, -np.inf), float(scores[index]))
            if len(found) == k:
                break
    return heapq.nlargest(k, best.items(), key=lambda item: item[1])
