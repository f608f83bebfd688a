"""Glue between embeddings and the protocol metrics: pair scores and verification reports.

Embeddings enter as sequences of unit vectors or ``None`` (no face found); scores of pairs with a
missing face are :data:`~veilface.eval.verification.NO_FACE_SCORE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from veilface.eval.extract import ImageResult
from veilface.eval.verification import (
    NO_FACE_SCORE,
    KFoldResult,
    error_rates,
    kfold_accuracy,
    tar_at_far,
)

#: False accept rates at which the true accept rate is reported.
FARS = (1e-3, 1e-4)


def cosine_scores(first: Sequence[np.ndarray | None], second: Sequence[np.ndarray | None]) -> np.ndarray:
    """Cosine similarity (float64) of each pair of unit embeddings; ``NO_FACE_SCORE`` if either is absent."""
    scores = np.full(len(first), NO_FACE_SCORE)
    for k, (a, b) in enumerate(zip(first, second, strict=True)):
        if a is not None and b is not None:
            scores[k] = float(np.dot(a.astype(np.float64), b.astype(np.float64)))
    return scores


def fold_thresholds(folds: np.ndarray, kfold: KFoldResult) -> np.ndarray:
    """For each pair, the threshold its held-out fold was tested with."""
    thresholds = dict(zip(kfold.folds, kfold.thresholds, strict=True))
    return np.array([thresholds[int(f)] for f in folds])


def verification_report(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    threshold: float | None = None,
    fars: Sequence[float] = FARS,
) -> dict:
    """The protocol's figures: k-fold accuracy, TAR at each FAR and, with a fixed ``threshold``
    (the model's calibrated default), the FMR and FNMR it gives on these pairs."""
    labels = np.asarray(labels, dtype=bool)
    kfold = kfold_accuracy(scores, labels, folds)
    report = {
        "pairs": len(scores),
        "mated": int(labels.sum()),
        "non_mated": int((~labels).sum()),
        "accuracy": round(kfold.mean, 6),
        "accuracy_std": round(kfold.std, 6),
        "folds": [
            {"fold": f, "threshold": round(t, 6), "accuracy": round(a, 6)}
            for f, t, a in zip(kfold.folds, kfold.thresholds, kfold.accuracies, strict=True)
        ],
        "far_resolution": 1.0 / max(int((~labels).sum()), 1),
        "tar_at_far": {},
    }
    for far in fars:
        tar, cut = tar_at_far(scores, labels, far)
        report["tar_at_far"][f"{far:g}"] = {"tar": round(tar, 6), "threshold": round(cut, 6)}
    if threshold is not None:
        fmr, fnmr = error_rates(scores, labels, threshold)
        report["at_default_threshold"] = {
            "threshold": threshold,
            "fmr": round(fmr, 6),
            "fnmr": round(fnmr, 6),
        }
    return report


def detection_report(results: Sequence[ImageResult]) -> dict:
    """How the pipeline fared on a set of images: failures to detect, quality rejections, errors."""
    return {
        "images": len(results),
        "no_face": sum(not r.found for r in results),
        "undecodable": sum(r.error is not None for r in results),
        "several_faces": sum(r.faces > 1 for r in results),
        "quality_rejected": sum(r.found and r.quality_reason is not None for r in results),
    }


def encrypted_agreement(
    plain: np.ndarray,
    encrypted: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    thresholds: Sequence[float],
) -> dict:
    """Compare encrypted scores with plaintext ones: largest difference and decision disagreements.

    Decisions are compared at each fold's protocol threshold (chosen on plaintext scores) and at every
    threshold in ``thresholds`` (the calibrated defaults); pairs without a face are left out of the
    difference (both sides give the same fixed score).
    """
    scored = plain != NO_FACE_SCORE
    kfold = kfold_accuracy(plain, labels, folds)
    protocol = fold_thresholds(folds, kfold)
    disagreements = int(np.sum((plain >= protocol) != (encrypted >= protocol)))
    at_defaults = {f"{t:g}": int(np.sum((plain >= t) != (encrypted >= t))) for t in thresholds}
    encrypted_kfold = kfold_accuracy(encrypted, labels, folds)
    return {
        "pairs_scored": int(scored.sum()),
        "max_abs_difference": float(np.max(np.abs(plain[scored] - encrypted[scored]), initial=0.0)),
        "decision_disagreements_protocol": disagreements,
        "decision_disagreements_at_threshold": at_defaults,
        "accuracy_encrypted": round(encrypted_kfold.mean, 6),
        "accuracy_plaintext": round(kfold.mean, 6),
    }
