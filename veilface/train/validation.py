"""Validation on the dev identities: every pair of their faces, scored with the evaluation's metrics.

The dev identities are held out of training; their faces give the validation curve, the choice of
whether to keep the pose mapping, and the registered threshold. They are never the evaluation pairs.
Embeddings are held in memory only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from veilface.eval.verification import best_threshold, tar_at_far


@dataclass(frozen=True)
class DevPairs:
    """All pairs ``(first[k], second[k])`` of the dev faces, split by kind.

    ``genuine`` pairs share an identity; ``impostor`` pairs do not. ``cross_pose`` marks the pairs of one
    frontal and one profile face.
    """

    first: np.ndarray
    second: np.ndarray
    genuine: np.ndarray
    cross_pose: np.ndarray

    @classmethod
    def build(
        cls, identities: Sequence[str], yaws: np.ndarray, *, frontal_yaw: float, profile_yaw: float
    ) -> DevPairs:
        ids = np.asarray(identities)
        first, second = np.triu_indices(len(ids), k=1)
        frontal, profile = np.abs(yaws) <= frontal_yaw, np.abs(yaws) >= profile_yaw
        cross = (frontal[first] & profile[second]) | (profile[first] & frontal[second])
        return cls(first=first, second=second, genuine=ids[first] == ids[second], cross_pose=cross)


def dev_metrics(
    embeddings: np.ndarray, pairs: DevPairs, *, target_fmr: float, seed: int = 0
) -> dict[str, float]:
    """Verification metrics of unit ``embeddings`` on the dev pairs.

    ``accuracy`` (and ``cross_pose_accuracy`` on frontal-profile pairs) is the best-threshold accuracy on
    all genuine pairs plus as many impostor pairs drawn at random with ``seed``; ``tar`` is the true
    accept rate at ``threshold``, the threshold of false match rate ``target_fmr`` on all impostor
    pairs.
    """
    scores = np.einsum("ij,ij->i", embeddings[pairs.first], embeddings[pairs.second])
    rng = np.random.default_rng(seed)
    metrics: dict[str, float] = {}
    for name, subset in (("accuracy", slice(None)), ("cross_pose_accuracy", pairs.cross_pose)):
        sub_scores, sub_genuine = scores[subset], pairs.genuine[subset]
        impostors = rng.choice(np.flatnonzero(~sub_genuine), size=int(sub_genuine.sum()), replace=False)
        balanced = np.concatenate([np.flatnonzero(sub_genuine), impostors])
        metrics[name] = 100.0 * best_threshold(sub_scores[balanced], sub_genuine[balanced])[1]
    metrics["tar"], metrics["threshold"] = tar_at_far(scores, pairs.genuine, target_fmr)
    metrics["tar"] *= 100.0
    metrics["impostor_pairs"] = int((~pairs.genuine).sum())
    return metrics
