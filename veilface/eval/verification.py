"""1:1 verification metrics on similarity scores: k-fold accuracy, TAR at FAR, ROC.

Pure numpy, no model code. A pair is accepted when its score is ``>= threshold``, the rule the gateway
applies. Pairs whose faces could not be found carry the score :data:`NO_FACE_SCORE` (-1, below any
cosine similarity of two real faces' embeddings in practice): they are rejected at every threshold the
protocol chooses, so a failure to detect is an error on every mated pair and is never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Score given to a pair one of whose images has no detected face.
NO_FACE_SCORE = -1.0


@dataclass(frozen=True)
class KFoldResult:
    """Accuracy of each held-out fold with the threshold chosen on the other folds."""

    folds: tuple[int, ...]
    thresholds: tuple[float, ...]
    accuracies: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Population standard deviation over folds (as insightface and most papers report it)."""
        return float(np.std(self.accuracies))


def make_folds(n: int, k: int = 10) -> np.ndarray:
    """Deterministic folds ``1..k`` for ``n`` pairs without their own: pair ``i`` goes to ``i % k + 1``.

    Interleaving (rather than contiguous blocks) keeps both classes in every fold even when a file
    lists all matched pairs first.
    """
    if n < k:
        raise ValueError(f"{n} pairs cannot be split into {k} folds")
    return np.arange(n) % k + 1


def accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Fraction of pairs decided right at ``threshold``."""
    return float(np.mean((scores >= threshold) == labels))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold of highest accuracy on these pairs, and that accuracy.

    Every cut between two consecutive distinct scores is tried (exactly, not on a grid); the threshold
    returned is the midpoint of the best gap, so it does not sit on a training score. Among equally
    good cuts the lowest is taken.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    values, inverse = np.unique(scores, return_inverse=True)
    # correct(t_i) for the cut just below values[i]: positives at or above it plus negatives below it.
    pos_at = np.bincount(inverse, weights=labels, minlength=len(values))
    neg_at = np.bincount(inverse, weights=~labels, minlength=len(values))
    pos_at_or_above = np.cumsum(pos_at[::-1])[::-1]
    neg_below = np.concatenate([[0.0], np.cumsum(neg_at)[:-1]])
    correct = np.append(pos_at_or_above + neg_below, neg_at.sum())  # last: reject everything
    best = int(np.argmax(correct))
    if best == 0:
        threshold = values[0] - 1e-6
    elif best == len(values):
        threshold = values[-1] + 1e-6
    else:
        threshold = (values[best - 1] + values[best]) / 2
    return float(threshold), float(correct[best] / len(scores))


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> KFoldResult:
    """For each fold: threshold of best accuracy on all other folds, accuracy on this fold."""
    scores, labels, folds = np.asarray(scores), np.asarray(labels, dtype=bool), np.asarray(folds)
    fold_ids = tuple(int(f) for f in np.unique(folds))
    if len(fold_ids) < 2:
        raise ValueError("k-fold accuracy needs at least two folds")
    thresholds, accuracies = [], []
    for fold in fold_ids:
        test = folds == fold
        threshold, _ = best_threshold(scores[~test], labels[~test])
        thresholds.append(threshold)
        accuracies.append(accuracy(scores[test], labels[test], threshold))
    return KFoldResult(fold_ids, tuple(thresholds), tuple(accuracies))


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """Lowest threshold at which at most ``far`` of the impostor scores are accepted (``>=``).

    With ``n`` impostors the achievable false accept rates are multiples of ``1/n``; when ``far < 1/n``
    the threshold lies just above the highest impostor score (no false accept at all). "Just above" is
    the next number of the scores' own precision, so that comparing float32 scores (where NumPy rounds
    the threshold to float32) rejects the cut too.
    """
    impostors = np.asarray(impostor_scores)
    if not np.issubdtype(impostors.dtype, np.floating):
        impostors = impostors.astype(np.float64)
    if not len(impostors):
        raise ValueError("no impostor scores")
    allowed = int(np.floor(far * len(impostors) + 1e-9))
    if allowed >= len(impostors):
        return float(impostors.min())
    # The (allowed+1)-th highest score must be rejected: the threshold sits just above it.
    cut = np.partition(impostors, len(impostors) - allowed - 1)[len(impostors) - allowed - 1]
    return float(np.nextafter(cut, impostors.dtype.type(np.inf)))


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far: float) -> tuple[float, float]:
    """True accept rate at the threshold of :func:`threshold_at_far`; returns ``(tar, threshold)``."""
    labels = np.asarray(labels, dtype=bool)
    threshold = threshold_at_far(np.asarray(scores)[~labels], far)
    return float(np.mean(np.asarray(scores)[labels] >= threshold)), threshold


def error_rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(false match rate, false non-match rate)`` at a fixed ``threshold``."""
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=bool)
    accepted = scores >= threshold
    return float(np.mean(accepted[~labels])), float(np.mean(~accepted[labels]))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(far, tar, thresholds)`` at every distinct score, thresholds decreasing."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    tar = np.cumsum(sorted_labels)[last_of_value] / max(labels.sum(), 1)
    far = np.cumsum(~sorted_labels)[last_of_value] / max((~labels).sum(), 1)
    return far, tar, sorted_scores[last_of_value]
