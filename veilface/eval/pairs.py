"""End-to-end 1:1 evaluation of a pair list: images through the face path, scores, report, plots.

This is what ``veilface eval pairs`` runs; :mod:`veilface.eval.run` uses the same pieces for the
standard benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veilface.config import Settings
from veilface.errors import NotFound
from veilface.eval.encrypted import EncryptedPairScorer
from veilface.eval.extract import FaceExtractor, ImageJob, ImageResult
from veilface.eval.plots import plot_histogram, plot_roc
from veilface.eval.protocols import PairList
from veilface.eval.scoring import cosine_scores, detection_report, encrypted_agreement, verification_report
from veilface.eval.variants import Variant
from veilface.eval.verification import NO_FACE_SCORE, make_folds
from veilface.models.registry import ModelRegistry


@dataclass(frozen=True, eq=False)
class PairOutcome:
    """Scores of one protocol and its report (``encrypted`` is ``None`` unless it was run)."""

    report: dict
    scores: np.ndarray
    labels: np.ndarray
    encrypted: np.ndarray | None = None


def default_threshold(settings: Settings, variant: Variant) -> float | None:
    """The registry's threshold for a one-member variant with the production flip setting, else None."""
    (member, *rest) = variant.members
    if rest or member.flip != settings.flip_fusion:
        return None
    try:
        return ModelRegistry(settings).get(member.version).threshold
    except NotFound:
        return None


def embed_images(
    extractor: FaceExtractor, root: Path, paths: Sequence[str], desc: str
) -> dict[str, ImageResult]:
    """Run every image of ``paths`` (relative to ``root``) through the extractor once."""
    results = extractor.run([ImageJob(root / path) for path in paths], desc=desc)
    return dict(zip(paths, results, strict=True))


def evaluate_protocol(
    labels: np.ndarray,
    folds: np.ndarray,
    first: Sequence[np.ndarray | None],
    second: Sequence[np.ndarray | None],
    *,
    threshold: float | None = None,
    scorer: EncryptedPairScorer | None = None,
    desc: str = "pairs",
) -> PairOutcome:
    """Score the pairs (plaintext, and under encryption when ``scorer`` is given) and report."""
    scores = cosine_scores(first, second)
    report = verification_report(scores, labels, folds, threshold=threshold)
    missing = scores == NO_FACE_SCORE
    report["pairs_without_face"] = {
        "mated": int(np.sum(missing & labels)),
        "non_mated": int(np.sum(missing & ~labels)),
    }
    encrypted = None
    if scorer is not None:
        found = np.flatnonzero(~missing)
        encrypted = np.full(len(scores), NO_FACE_SCORE)
        encrypted[found] = scorer.score([(first[k], second[k]) for k in found], desc=f"{desc} (encrypted)")
        thresholds = [threshold] if threshold is not None else []
        report["encrypted"] = encrypted_agreement(scores, encrypted, labels, folds, thresholds)
    return PairOutcome(report=report, scores=scores, labels=labels, encrypted=encrypted)


def evaluate_pair_file(
    settings: Settings,
    pairs: PairList,
    variant: Variant,
    out: Path,
    *,
    encrypted: bool = False,
    processes: int = 2,
    detector_size: int | None = None,
    pad: float = 0.0,
) -> dict:
    """Evaluate ``pairs`` with ``variant``; write ``out`` (JSON) and its ROC and histogram PNGs beside it."""
    with FaceExtractor(
        settings, variant.members, processes=processes, detector_size=detector_size, pad=pad
    ) as extractor:
        images = embed_images(extractor, pairs.root, pairs.images, desc="images")
    first = [images[p].embedding(variant) for p in pairs.first]
    second = [images[p].embedding(variant) for p in pairs.second]
    folds = pairs.folds if pairs.folds is not None else make_folds(len(pairs))
    threshold = default_threshold(settings, variant)
    dim = next((e.shape[0] for e in first + second if e is not None), 0)
    scorer = EncryptedPairScorer(dim, processes=processes) if encrypted and dim else None
    with scorer or nullcontext():
        outcome = evaluate_protocol(pairs.labels, folds, first, second, threshold=threshold, scorer=scorer)
    report = {
        "variant": variant.name,
        "detector_size": detector_size,
        "pad": pad,
        "face": "main",
        "folds_from_file": pairs.folds is not None,
        "detection": detection_report(list(images.values())),
        **outcome.report,
    }
    report["plots"] = write_plots(out.with_suffix(""), {variant.name: outcome}, threshold, title=out.stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def write_plots(stem: Path, outcomes: Mapping[str, PairOutcome], threshold: float | None, title: str) -> dict:
    """``<stem>.roc.png`` with a curve per outcome and ``<stem>.hist.png`` of the first outcome."""
    roc = plot_roc({k: (o.scores, o.labels) for k, o in outcomes.items()}, f"{stem}.roc.png", f"{title}: ROC")
    first = next(iter(outcomes.values()))
    hist = plot_histogram(first.scores, first.labels, f"{stem}.hist.png", f"{title}: scores", threshold)
    return {"roc": str(roc), "histogram": str(hist)}
