"""Training curves as a PNG: the loss of every step and its epoch mean, and dev accuracy per epoch."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def plot_curves(history: list[dict], path: Path, *, title: str) -> None:
    """Draw ``history`` to ``path``: entries with ``epoch`` and optionally ``loss``, ``step_losses``,
    ``dev``."""
    trained = [h for h in history if "loss" in h]
    validated = [h for h in history if h.get("dev")]
    fig = Figure(figsize=(11 if validated else 6, 4))
    axes = fig.subplots(1, 2 if validated else 1, squeeze=False)
    loss_ax = axes[0][0]
    for entry in trained:
        steps = entry["step_losses"]
        xs = [entry["epoch"] - 1 + (k + 1) / len(steps) for k in range(len(steps))]
        loss_ax.plot(xs, steps, color="tab:blue", alpha=0.25, linewidth=0.8)
    loss_ax.plot(
        [h["epoch"] for h in trained],
        [h["loss"] for h in trained],
        "o-",
        color="tab:blue",
        label="epoch mean",
    )
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss (every step, epoch mean)")
    loss_ax.legend()
    if validated:
        dev_ax = axes[0][1]
        epochs = [h["epoch"] for h in validated]
        for key, label in (("accuracy", "all pairs"), ("cross_pose_accuracy", "frontal-profile pairs")):
            dev_ax.plot(epochs, [h["dev"][key] for h in validated], "o-", label=label)
        dev_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="dev identities (held out)")
        dev_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
