"""Hidden sentinel templates, pure logic: where they go, what they are, and the check they make.

A sentinel is a template row with no subject, encrypted with the public key like any
template, so a matcher (which sees only positions, states and ciphertexts) cannot tell it
from an enrolled face. Its vector is a random unit vector that only the gateway can rebuild,
from a secret seed. With each probe the embedder, which holds the plaintext probe, computes
the sentinels' true scores; the gateway refuses a matcher's answer in which a sentinel's
decrypted score differs from it by more than the CKKS noise. A matcher that alters ``m``
live scores of a block holding ``k`` sentinels among ``n`` live slots goes unnoticed with
probability ``C(n - k, m) / C(n, m)`` (:func:`undetected_probability`; docs/encrypted-search.md).

Everything here is deterministic numpy and hashing: the gateway (:mod:`veilface.store.sentinels`)
and the embedder call the same functions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np

from veilface import errors
from veilface.crypto.layout import BlockLayout
from veilface.crypto.sealing import ImageBinding, PayloadSealer
from veilface.messaging.messages import b64decode, b64encode
from veilface.search.checks import ForgedAnswer
from veilface.search.results import ScoreResult

#: Bytes of a sentinel's seed.
SEED_BYTES = 32
#: At most this many sentinels are added in a row at one top-up (a bound, should the rate be high).
MAX_RUN = 8


@dataclass(frozen=True)
class SentinelRef:
    """One sentinel as the gateway hands it out: its position and the seed of its vector."""

    block_no: int
    slot: int
    seed: bytes


def sentinel_vector(seed: bytes, dim: int) -> np.ndarray:
    """The unit vector of dimension ``dim`` (even) drawn from ``seed``: uniform on the sphere.

    SHAKE-256 of the seed gives uniform numbers, Box-Muller turns them into Gaussians, which
    are normalised: the same bytes give the same vector on every machine and numpy version.
    """
    raw = np.frombuffer(hashlib.shake_256(seed).digest(4 * dim), dtype="<u4").astype(np.float64)
    uniform = (raw + 0.5) / 2.0**32
    radius = np.sqrt(-2.0 * np.log(uniform[: dim // 2]))
    angle = 2.0 * np.pi * uniform[dim // 2 :]
    vector = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
    return vector / np.linalg.norm(vector)


def is_sentinel_slot(key: bytes, gallery_id: int, model_version: str, sequence: int, rate: float) -> bool:
    """Whether gallery position ``sequence`` is a sentinel's: a keyed coin with odds ``rate``.

    HMAC-SHA-256 under the gateway's ``sentinel.key``: without the key the positions are
    independent coin flips to anyone, the matcher included.
    """
    message = f"sentinel-slot:{gallery_id}:{model_version}:{sequence}".encode()
    draw = int.from_bytes(hmac.new(key, message, hashlib.sha256).digest()[:8], "big")
    return draw < rate * 2.0**64


def expected_scores(probe: np.ndarray, seeds: Sequence[bytes]) -> list[float]:
    """The true score of the (plaintext) ``probe`` against each sentinel, in ``seeds`` order."""
    unit = np.asarray(probe, dtype=np.float64)
    unit = unit / np.linalg.norm(unit)
    return [float(unit @ sentinel_vector(seed, len(unit))) for seed in seeds]


def check_sentinels(
    decrypted: Iterable[tuple[ScoreResult, np.ndarray]],
    expected: Mapping[tuple[int, int], float],
    tolerances: Mapping[tuple[int, str], float],
    slots_per_ciphertext: int,
) -> None:
    """Raise :class:`ForgedAnswer` unless each sentinel of ``expected`` scored what it should.

    ``decrypted`` holds every checked score vector of one search, ``expected`` maps the
    ``(block_no, slot)`` of each sentinel to its true score, ``tolerances`` the noise margin
    of each ``(block_no, source)`` result. A sentinel is in its block's packed vector or in
    its delta vector, and the other holds zero there (checked before), so its score is the
    sum of both, within the sum of their margins.
    """
    found: dict[tuple[int, int], float] = {}
    margin: dict[int, float] = {}
    for result, vector in decrypted:
        layout = BlockLayout(slots_per_ciphertext, result.dim)
        slots = [slot for block_no, slot in expected if block_no == result.block_no]
        if not slots:
            continue
        margin[result.block_no] = (
            margin.get(result.block_no, 0.0) + tolerances[result.block_no, result.source]
        )
        for slot, score in zip(slots, layout.slot_scores(vector, np.asarray(slots)), strict=True):
            found[result.block_no, slot] = found.get((result.block_no, slot), 0.0) + float(score)
    for (block_no, slot), score in expected.items():
        if abs(found.get((block_no, slot), 0.0) - score) > margin.get(block_no, 0.0):
            raise ForgedAnswer(f"block {block_no}: a sentinel's score differs from its true score")


def undetected_probability(live: int, sentinels: int, forged: int) -> float:
    """Odds that ``forged`` altered values, among ``live`` slots of which ``sentinels`` are
    sentinels the forger cannot tell apart, all miss the sentinels: ``C(n-k, m) / C(n, m)``."""
    if forged > live:
        raise ValueError("more forged values than live slots")
    return comb(live - sentinels, forged) / comb(live, forged)


# -- on the wire: seeds to the embedder, true scores back, both sealed with the queue key -------


def seal_seeds(sealer: PayloadSealer, binding: ImageBinding, seeds: Sequence[bytes]) -> str:
    """The seeds for one probe task, sealed to that task's ``binding`` (base64; ``""`` for none)."""
    if not seeds:
        return ""
    payload = json.dumps([seed.hex() for seed in seeds]).encode()
    return b64encode(sealer.seal_data(payload, binding.associated_data() + b"#sentinel-seeds"))


def open_seeds(sealer: PayloadSealer, binding: ImageBinding, sealed: str) -> list[bytes]:
    """The seeds :func:`seal_seeds` sealed for this task; ``MessageRefused`` if they were not."""
    if not sealed:
        return []
    payload = sealer.open_data(b64decode(sealed), binding.associated_data() + b"#sentinel-seeds", "sentinels")
    return [bytes.fromhex(seed) for seed in json.loads(payload)]


def _scores_binding(index: int, probe_ciphertext: str) -> bytes:
    """Associated data of the true scores of probe ``index``: they hold for that ciphertext only."""
    digest = hashlib.sha256(probe_ciphertext.encode()).hexdigest()
    return f"sentinel-scores:{index}:{digest}".encode()


def seal_scores(sealer: PayloadSealer, index: int, probe_ciphertext: str, scores: Sequence[float]) -> str:
    """Embedder side: the true scores of probe ``index`` of a task, sealed to its ciphertext."""
    payload = json.dumps([float(score) for score in scores]).encode()
    return b64encode(sealer.seal_data(payload, _scores_binding(index, probe_ciphertext)))


def open_scores(
    sealer: PayloadSealer, index: int, probe_ciphertext: str, sealed: str | None, refs: Sequence[SentinelRef]
) -> dict[tuple[int, int], float]:
    """Gateway side: ``(block_no, slot) -> true score`` of each sentinel in ``refs`` for probe ``index``.

    ``MessageRefused`` unless the embedder sealed exactly one finite score per sentinel for
    this very probe ciphertext (a result backend writer can neither forge nor move them).
    """
    if not refs:
        return {}
    if not isinstance(sealed, str):
        raise errors.MessageRefused("a probe came without its sentinels' scores")
    scores = json.loads(
        sealer.open_data(b64decode(sealed), _scores_binding(index, probe_ciphertext), "scores")
    )
    if len(scores) != len(refs) or not all(isinstance(s, float) and np.isfinite(s) for s in scores):
        raise errors.MessageRefused("the sentinels' scores do not fit the sentinels sent")
    return {(ref.block_no, ref.slot): score for ref, score in zip(refs, scores, strict=True)}


def sealed_true_scores(
    sealer: PayloadSealer, seeds: Sequence[bytes], index: int, ciphertext: str | None, vector: np.ndarray
) -> str | None:
    """Embedder side: the sealed true scores of probe ``index`` (its plaintext ``vector``,
    encrypted as ``ciphertext``) against the sentinels; ``None`` without sentinels or probe."""
    if not seeds or ciphertext is None:
        return None
    return seal_scores(sealer, index, ciphertext, expected_scores(vector, seeds))
