"""ROC curves and score histograms as PNG files (matplotlib's object API: no display, no global state)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from veilface.eval.verification import NO_FACE_SCORE, roc_curve


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """One ROC curve per ``label: (scores, labels)``: TAR against FAR on a log axis."""
    fig = Figure(figsize=(6, 4.5), dpi=110)
    ax = fig.subplots()
    floor = 1.0
    for label, (scores, labels) in curves.items():
        far, tar, _ = roc_curve(scores, labels)
        positive = far > 0
        ax.plot(far[positive], tar[positive], label=label, linewidth=1.4)
        floor = min(floor, float(far[positive].min(initial=1.0)))
    ax.set_xscale("log")
    ax.set_xlim(max(floor, 1e-6), 1.0)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_histogram(
    scores: np.ndarray, labels: np.ndarray, path: str | Path, title: str, threshold: float | None = None
) -> Path:
    """Histograms of mated and non-mated similarity scores; pairs without a face are counted apart."""
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=bool)
    scored = scores != NO_FACE_SCORE
    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.subplots()
    bins = np.linspace(-0.4, 1.0, 71)
    ax.hist(scores[scored & labels], bins=bins, alpha=0.6, label="mated", color="tab:green")
    ax.hist(scores[scored & ~labels], bins=bins, alpha=0.6, label="non-mated", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    missing = int((~scored).sum())
    ax.set_xlabel("cosine similarity" + (f" ({missing} pairs without a face not shown)" if missing else ""))
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path
