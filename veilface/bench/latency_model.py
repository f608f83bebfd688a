"""Search time per query against gallery size, from the cost model of the block kernel.

``python -m veilface.bench.latency_model results/bench-he-512.json [--before OLD.json]
--matchers 1 2 --plot docs/img/search-latency-512.png`` reads the figures of a
:mod:`veilface.bench.he` run (block time, baby and giant step), prints the modelled matcher
time per query from 1,000 to 2^20 templates as a Markdown table, and plots it with the
measured points (``--before``: a run of the single-step kernel, plotted as measured).

The model, per matcher process holding ``b`` of the gallery's ``B`` blocks (every
``matchers``-th block; the real assignment is by rendezvous hashing, so about as many), all
laid out with ``g = baby_steps_for(d, B)``::

    t = (g - 1) * baby + b * (P + (d / g - 1) * giant)

``P`` is the ``d`` products of one block (the measured block time less its giant steps),
``baby`` a probe rotation at the packed level, ``giant`` a giant step (rescale,
relinearisation, rotation at the score level). The single-step kernel is ``g = d``.
Latency through HTTP adds detection, embedding, queue hops and decryption (about 0.2 s on
the idle reference machine), and the delta.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from veilface.crypto.params import DEFAULT_PARAMS
from veilface.search.layout import baby_steps_for

SIZES = (1_000, 4_096, 10_000, 16_384, 65_536, 262_144, 2**20)


def search_seconds(report: dict, templates: int, matchers: int, single_step: bool = False) -> float:
    """Modelled matcher time per query for ``templates`` templates over ``matchers`` processes."""
    dim = report["dim"]
    measured = report.get("baby_steps") or [dim] * report["blocks"]
    giant = report["giant_step_ms"] / 1e3
    products = report["block_search_ms"] / 1e3 - giant * sum(dim // g - 1 for g in measured) / len(measured)
    blocks = math.ceil(templates / DEFAULT_PARAMS.block_capacity)
    g = dim if single_step else baby_steps_for(dim, blocks)
    held = math.ceil(blocks / matchers)
    return (g - 1) * report["baby_step_ms"] / 1e3 + held * (products + (dim // g - 1) * giant)


def measured_seconds(report: dict) -> float:
    """What the bench measured for one query of its gallery on one process."""
    return report["query_fixed_s"] + report["blocks"] * report["block_search_ms"] / 1e3


def table(report: dict, matchers: list[int]) -> str:
    """Markdown table: modelled seconds per query, single-step against baby-step giant-step."""
    head = ["templates"] + [f"{kind}, {m} matcher(s)" for m in matchers for kind in ("single-step", "BSGS")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in SIZES:
        cells = [
            f"{search_seconds(report, size, m, single_step):.2f} s"
            for m in matchers
            for single_step in (True, False)
        ]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(report: dict, before: dict | None, matchers: list[int], path: Path) -> None:
    """Modelled curves (log-log) with the measured points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(1000 * (2**20 / 1000) ** (k / 60)) for k in range(61)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in matchers:
        for single_step, style in ((True, "--"), (False, "-")):
            label = f"{'single-step' if single_step else 'baby-step giant-step'}, {m} matcher(s)"
            ax.plot(sizes, [search_seconds(report, s, m, single_step) for s in sizes], style, label=label)
    ax.plot(report["gallery"], measured_seconds(report), "ko", label="measured, baby-step giant-step")
    if before is not None:
        ax.plot(before["gallery"], measured_seconds(before), "kx", ms=9, label="measured, single-step")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("templates in the gallery")
    ax.set_ylabel("matcher time per query (s)")
    ax.set_title(f"{report['dim']}-D: encrypted search time per query (model, measured points)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="JSON written by veilface.bench.he")
    parser.add_argument("--before", type=Path, help="a bench.he JSON of the single-step kernel")
    parser.add_argument("--matchers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--plot", type=Path, help="write the plot (PNG) here")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    print(table(report, args.matchers))
    if args.plot:
        before = json.loads(args.before.read_text()) if args.before else None
        plot(report, before, args.matchers, args.plot)


if __name__ == "__main__":
    main()
