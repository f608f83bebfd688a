"""Gateway side, pure numpy: refuse a matcher's answer that is not what the gateway asked for.

A matcher holds the public keys, so it can hand back any ciphertext of the key set as a
"score": a stored template rotated and relabelled, or a value it encrypted itself. These
checks bound what such an answer can get out of the gateway. The gateway plans each search
(which blocks it asks each matcher for, of which template dimension), and an answer passes
only if

* it has one part per probe sent, in the order sent, each naming its probe's digest
  (a batch: the faces of one image in one message per matcher), and each part
  covers exactly the blocks asked of that matcher, each at most once per source
  (packed block, delta), of the planned dimension, with slots that were ever allocated;
* once decrypted (only score-level ciphertexts of the exact genuine scale are, see
  :meth:`veilface.crypto.secret.SecretContext.decrypt_scores`), every lane that can hold
  no score is near zero and every lane that can is within ``[-1, 1]``.

Which lanes can hold a score (the *allowed* slots):

* a packed block: every slot ever allocated in the block. Deleted templates stay in the
  diagonals until the block is rebuilt, and their rows are gone, so the gateway cannot
  tell a deleted slot from a live one: any allocated slot may be nonzero; slots past the
  gallery's slot counter (and past the block's highest live slot) were never filled and
  decrypt to zero.
* a delta: the slots the matcher says it scored, all allocated (its windows for other slots
  are empty, and the group masks zero every position of another group).
* a 1:1 pair: slot 0 only.

Every template and probe is a unit vector, so a genuine score lies in ``[-1, 1]`` up to the
CKKS noise; :func:`noise_tolerance` is that margin (measured, see docs/reliability.md). It
grows with the number of times a packed block was rewritten by compaction, which the gateway
reads from the block's version in the database, never from the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from veilface.crypto.layout import BlockLayout
from veilface.messaging.messages import is_int
from veilface.search.results import ScoreResult

#: Largest |value| accepted at a lane that holds no score, and accepted excess of |score| over 1,
#: for an answer computed on fresh ciphertexts (a delta, a pair, a block packed in one go).
#: Measured (docs/reliability.md, "A lying matcher"): at most 2.5e-6; a factor of 40 above it.
BASE_TOLERANCE = 1e-4
#: What each fold of a delta into a packed block adds to that margin: the noise of the block's
#: diagonals grows by at most 5.6e-7 per fold (measured over 128 folds); a factor of 35 above it.
PER_FOLD_TOLERANCE = 2e-5


def noise_tolerance(folds: int) -> float:
    """The margin for scores of a block rewritten ``folds`` times (0: fresh ciphertexts)."""
    return BASE_TOLERANCE + PER_FOLD_TOLERANCE * folds


class ForgedAnswer(Exception):
    """A matcher's answer fails a check; ``reason`` says which (never a decrypted value)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ShardPlan:
    """What the gateway asked one matcher for: ``blocks`` of templates of dimension ``dim``,
    scored for each probe of ``probes`` (their digests, in the order sent), which are the
    probes at ``probe_indices`` of the search (:func:`veilface.search.routing.spread_probes`)."""

    worker: str
    dim: int
    blocks: frozenset[int]
    probes: tuple[str, ...] = ()
    probe_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class GalleryState:
    """What the gateway reads from the database once the answers came, to check them.

    ``slot_counter`` is the gallery's next never-used position, ``block_versions`` the version
    of each packed block, ``allocated_ends`` one past the highest live slot of each block.
    Every value only grows while a search runs (slots are never reused, block versions only
    go up), so whatever a matcher saw is covered.
    """

    slot_counter: int
    block_versions: Mapping[int, int]
    allocated_ends: Mapping[int, int]

    @classmethod
    def of(
        cls, slot_counter: int, block_versions: Mapping[int, int], live_slots: Iterable[tuple[int, int]]
    ) -> GalleryState:
        """The state from the slot counter, the block versions and the ``(block_no, slot)`` of
        every live template."""
        ends: dict[int, int] = {}
        for block_no, slot in live_slots:
            ends[block_no] = max(ends.get(block_no, 0), slot + 1)
        return cls(slot_counter, dict(block_versions), ends)

    @property
    def live_blocks(self) -> frozenset[int]:
        """Block numbers holding at least one live template."""
        return frozenset(self.allocated_ends)

    def allocated(self, block_no: int, capacity: int) -> int:
        """How many slots of block ``block_no`` were ever allocated.

        The slot counter says it for every block below it, deleted templates included; a live
        template past it (a counter set back by hand, as the fault tests do) counts too.
        """
        from_counter = int(np.clip(self.slot_counter - block_no * capacity, 0, capacity))
        return max(from_counter, self.allocated_ends.get(block_no, 0))


def check_shard_answer(
    plan: ShardPlan, results: Iterable[ScoreResult], state: GalleryState, capacity: int
) -> None:
    """Raise :class:`ForgedAnswer` unless ``results`` is a well-formed answer to ``plan``.

    Every result names a block asked in the plan, with the plan's dimension, a known source,
    distinct sorted in-block slots and at most one result per ``(block, source)``; every
    block of the plan that holds live templates (in ``state``, read after the answer came)
    has at least one result.
    """
    seen: set[tuple[int, str]] = set()
    for result in results:
        _check_types(result)
        if result.block_no not in plan.blocks:
            raise ForgedAnswer(f"scores for block {result.block_no}, which was not asked")
        if result.source not in ("block", "delta") or result.dim != plan.dim:
            raise ForgedAnswer(f"block {result.block_no}: source {result.source!r}, dim {result.dim}")
        if (result.block_no, result.source) in seen:
            raise ForgedAnswer(f"block {result.block_no} ({result.source}) answered twice")
        seen.add((result.block_no, result.source))
        if list(result.slots) != sorted(set(result.slots)) or not _in_range(result.slots, capacity):
            raise ForgedAnswer(f"block {result.block_no}: malformed slot list")
    missing = (plan.blocks & state.live_blocks) - {block_no for block_no, _ in seen}
    if missing:
        raise ForgedAnswer(f"no scores for block(s) {sorted(missing)}")


def check_probe_parts(plan: ShardPlan, digests: Sequence[str]) -> None:
    """Raise :class:`ForgedAnswer` unless a batched answer has one part per probe of ``plan``,
    each naming its probe's digest, in the order the probes were sent.

    A dropped, repeated, added or reordered part is refused: each part is then checked with
    :func:`check_shard_answer` as the answer to its own probe.
    """
    if len(digests) != len(plan.probes):
        raise ForgedAnswer(f"{len(digests)} answer parts for {len(plan.probes)} probes")
    for n, (digest, asked) in enumerate(zip(digests, plan.probes, strict=True)):
        if digest != asked:
            raise ForgedAnswer(f"answer part {n} is not for probe {n}")


def check_pair_answer(results: list[ScoreResult], dim: int) -> None:
    """Raise :class:`ForgedAnswer` unless ``results`` is one delta score of slot 0, dimension ``dim``."""
    if len(results) != 1:
        raise ForgedAnswer(f"{len(results)} score ciphertexts for one pair")
    (result,) = results
    _check_types(result)
    if (result.block_no, result.source, result.dim, result.slots) != (0, "delta", dim, (0,)):
        raise ForgedAnswer("a pair score that is not slot 0 of a delta of the probe's dimension")


def _check_types(result: ScoreResult) -> None:
    """Numbers where numbers belong: the rest of the message is the matcher's to fill."""
    numbers = (result.block_no, result.block_version, result.dim, *result.slots)
    if not all(is_int(n) for n in numbers) or not isinstance(result.source, str):
        raise ForgedAnswer("a score result of malformed types")


def _in_range(slots: tuple[int, ...], capacity: int) -> bool:
    return not slots or 0 <= slots[0] <= slots[-1] < capacity


def expected_lanes(result: ScoreResult, state: GalleryState, capacity: int) -> tuple[np.ndarray, float]:
    """The slots of ``result`` that may hold a score (see the module docstring) and the noise margin.

    Raises :class:`ForgedAnswer` for a result that claims a slot never allocated, or scores of
    a packed block that does not exist or of a newer version than the database's.
    """
    allocated = state.allocated(result.block_no, capacity)
    claimed = np.asarray(result.slots, dtype=np.int64)
    if claimed.size and claimed.max() >= allocated:
        raise ForgedAnswer(f"block {result.block_no}: scores for slots never allocated")
    if result.source == "delta":
        return claimed, noise_tolerance(0)
    version = state.block_versions.get(result.block_no)
    if version is None or result.block_version > version:
        raise ForgedAnswer(f"block {result.block_no}: a packed block of an unknown version")
    return np.arange(allocated), noise_tolerance(version)


def check_scores(
    layout: BlockLayout, vector: np.ndarray, allowed: np.ndarray, tolerance: float, what: str
) -> None:
    """Raise :class:`ForgedAnswer` unless the decrypted ``vector`` looks like genuine scores.

    ``allowed`` lists the slots that may hold a score: each such lane must lie within
    ``[-1, 1]`` and every other lane must be zero, both up to ``tolerance``.
    """
    lanes = np.stack([np.real(vector), np.imag(vector)])
    may_hold = np.zeros(lanes.shape, dtype=bool)
    lane, position = layout.locate(allowed)
    may_hold[lane, position] = True
    if not np.all(np.isfinite(lanes)):
        raise ForgedAnswer(f"{what}: scores that are not finite")
    if np.any(np.abs(lanes[~may_hold]) > tolerance):
        raise ForgedAnswer(f"{what}: nonzero values where no template can be")
    if np.any(np.abs(lanes[may_hold]) > 1 + tolerance):
        raise ForgedAnswer(f"{what}: scores outside [-1, 1]")
