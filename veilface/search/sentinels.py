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
from veilface.messaging.messages import Probe, b64decode, b64encode
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


#: Sentinel vectors drawn at once when scoring (a bound on memory: 4096 x 1024 doubles = 32 MiB).
CHUNK = 4096


def sentinel_vectors(seeds: Sequence[bytes], dim: int) -> np.ndarray:
    """The unit vectors of dimension ``dim`` drawn from ``seeds``, one row per seed.

    SHAKE-256 of each seed gives ``dim`` uniform 16-bit integers, centred and normalised: the
    same bytes give the same vector on every machine and numpy version. (Not uniform on the
    sphere, which nothing needs: the vector is never seen, only its encryption.)
    """
    raw = b"".join(hashlib.shake_256(seed).digest(2 * dim) for seed in seeds)
    vectors = np.frombuffer(raw, dtype="<i2").reshape(len(seeds), dim) + 0.5
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def sentinel_vector(seed: bytes, dim: int) -> np.ndarray:
    """The unit vector of one seed (:func:`sentinel_vectors`)."""
    return sentinel_vectors([seed], dim)[0]


def is_sentinel_slot(key: bytes, gallery_id: int, model_version: str, sequence: int, rate: float) -> bool:
    """Whether gallery position ``sequence`` is a sentinel's: a keyed coin with odds ``rate``.

    HMAC-SHA-256 under the gateway's ``sentinel.key``: without the key the positions are
    independent coin flips to anyone, the matcher included.
    """
    message = f"sentinel-slot:{gallery_id}:{model_version}:{sequence}".encode()
    draw = int.from_bytes(hmac.new(key, message, hashlib.sha256).digest()[:8], "big")
    return draw < rate * 2.0**64


def true_scores(probes: Sequence[np.ndarray], seeds: Sequence[bytes]) -> np.ndarray:
    """``(len(probes), len(seeds))``: the true score of each (plaintext) probe, normalised as it
    is encrypted, against each sentinel; the probes share one dimension."""
    if not probes:
        return np.zeros((0, len(seeds)))
    units = np.stack([np.asarray(probe, dtype=np.float64) for probe in probes])
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    scores = np.empty((len(units), len(seeds)))
    for start in range(0, len(seeds), CHUNK):
        scores[:, start : start + CHUNK] = (
            units @ sentinel_vectors(seeds[start : start + CHUNK], units.shape[1]).T
        )
    return scores


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
    sealer: PayloadSealer,
    seeds: Sequence[bytes],
    ciphertexts: Sequence[str | None],
    vectors: Sequence[np.ndarray],
) -> list[str | None]:
    """Embedder side: for each face of a probe task (its probe ``ciphertexts[i]``, ``None`` if
    unusable, of plaintext ``vectors[i]``), its true scores against the sentinels, sealed to its
    index and ciphertext; ``None`` for every face when no sentinel was sent."""
    if not seeds:
        return [None] * len(ciphertexts)
    scores = true_scores(vectors, seeds)
    return [
        None if ciphertext is None else seal_scores(sealer, index, ciphertext, scores[index])
        for index, ciphertext in enumerate(ciphertexts)
    ]


def expected_per_probe(
    sealer: PayloadSealer, probes: Sequence[Probe], refs: Sequence[SentinelRef]
) -> list[dict[tuple[int, int], float]]:
    """Gateway side: for each probe of one task, by index, the true scores of ``refs``
    (:func:`open_scores`; empty for a face without a probe)."""
    return [
        {}
        if probe.ciphertext is None
        else open_scores(sealer, index, probe.ciphertext, probe.sentinel_scores, refs)
        for index, probe in enumerate(probes)
    ]
