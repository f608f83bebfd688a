"""1:N open-set identification metrics: rank-1 identification rate and FNIR at a fixed FPIR.

Pure numpy, no model code. Searches whose face was not found are ``None``: a mated one is a miss at
every threshold, a non-mated one returns no candidate (never a false positive). FNIR follows
ISO/IEC 19795-1 and NIST FRVT with a candidate list of one: a mated search is missed unless its mate
is the top candidate with a score at or above the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from veilface.eval.verification import threshold_at_far


@dataclass(frozen=True)
class IdentificationResult:
    """Outcome of one open-set identification experiment."""

    gallery_size: int
    mated_searches: int
    non_mated_searches: int
    rank1: float
    fpir: float
    fnir: float
    threshold: float

    def as_dict(self) -> dict:
        return {
            "gallery_size": self.gallery_size,
            "mated_searches": self.mated_searches,
            "non_mated_searches": self.non_mated_searches,
            "rank1": round(self.rank1, 6),
            "fpir": self.fpir,
            "fnir_at_fpir": round(self.fnir, 6),
            "threshold_at_fpir": round(self.threshold, 6),
        }


def open_set_identification(
    gallery: np.ndarray,
    gallery_ids: Sequence[str],
    mated: Sequence[np.ndarray | None],
    mated_ids: Sequence[str],
    non_mated: Sequence[np.ndarray | None],
    fpir: float = 1e-2,
) -> IdentificationResult:
    """Search every probe against the gallery (unit rows, cosine similarity) and score the outcome.

    ``gallery_ids[k]`` names the identity of ``gallery[k]``; ``mated_ids[k]`` the identity sought by
    ``mated[k]``, which may be absent from the gallery (its enrollment failed): always a miss.
    """
    gallery = np.asarray(gallery, dtype=np.float32)
    gallery_ids = np.asarray(gallery_ids)
    top_ids, top_scores = _top1(gallery, gallery_ids, mated)
    hit = top_ids == np.asarray(mated_ids)
    _, non_mated_scores = _top1(gallery, gallery_ids, non_mated)
    threshold = threshold_at_far(non_mated_scores, fpir)
    return IdentificationResult(
        gallery_size=len(gallery),
        mated_searches=len(mated),
        non_mated_searches=len(non_mated),
        rank1=float(np.mean(hit)),
        fpir=fpir,
        fnir=float(1.0 - np.mean(hit & (top_scores >= threshold))),
        threshold=threshold,
    )


def _top1(
    gallery: np.ndarray, gallery_ids: np.ndarray, probes: Sequence[np.ndarray | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Identity and score of the best gallery entry for each probe (``""`` and ``-inf`` without a face)."""
    ids = np.full(len(probes), "", dtype=object)
    scores = np.full(len(probes), -np.inf)
    found = [k for k, probe in enumerate(probes) if probe is not None]
    if found and len(gallery):
        similarity = np.stack([probes[k] for k in found]).astype(np.float32) @ gallery.T
        best = np.argmax(similarity, axis=1)
        ids[found] = gallery_ids[best]
        scores[found] = similarity[np.arange(len(found)), best]
    return ids, scores
