"""Markdown tables of a ``make eval`` report, written into the generated section of docs/accuracy.md.

Only the text between :data:`BEGIN` and :data:`END` is replaced; the rest of the document is prose
kept by hand. A document without the markers gets them appended.
"""

from __future__ import annotations

from pathlib import Path

BEGIN = "<!-- BEGIN GENERATED: python -m veilface.eval.run -->"
END = "<!-- END GENERATED -->"
NAMES = {
    "lfw": "LFW",
    "cfp_ff": "CFP-FF",
    "cfp_fp": "CFP-FP",
    "occ_lfw": "Occ-LFW",
    "occ_cfp_fp": "Occ-CFP-FP",
}


def update_docs(path: Path, report: dict) -> None:
    """Replace the generated section of ``path`` (created if missing) with the tables of ``report``."""
    text = path.read_text() if path.exists() else "# Accuracy\n"
    section = f"{BEGIN}\n{render(report)}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def render(report: dict) -> str:
    """All the tables, as markdown."""
    parts = [
        _headline(report),
        _identification(report),
        _candidates(report),
        _encrypted(report),
        _occluders(report),
        _detection(report),
        _plots(report),
        _provenance(report),
    ]
    return "\n\n".join(part for part in parts if part)


def _pct(value: float, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _headline(report: dict) -> str:
    name = report["primary"]
    variant = report["variants"][name]
    threshold = variant["calibration"]["threshold"]
    rows = []
    for protocol, label in NAMES.items():
        r = variant[protocol]
        tar = r["tar_at_far"]
        at = r["at_default_threshold"]
        missing = r["pairs_without_face"]
        target = report["targets"].get(protocol)
        verdict = (
            "reported"
            if target is None
            else f"≥ {_pct(target)}: {'met' if r['accuracy'] >= target else 'missed'}"
        )
        rows.append(
            [
                label,
                str(r["pairs"]),
                f"{_pct(r['accuracy'])} ± {_pct(r['accuracy_std'])}",
                _pct(tar["0.001"]["tar"]),
                _pct(tar["0.0001"]["tar"]),
                f"{missing['mated']} / {missing['non_mated']}",
                f"{_pct(at['fmr'], 3)} / {_pct(at['fnmr'])}",
                verdict,
            ]
        )
    header = [
        "Benchmark",
        "Pairs",
        "Accuracy (10-fold, mean ± std)",
        "TAR @ FAR 1e-3",
        "TAR @ FAR 1e-4",
        "Pairs without a face (mated / non-mated)",
        f"FMR / FNMR at {threshold:.4f}",
        "Target",
    ]
    intro = (
        f"### Headline: `{name}`\n\nSelected by: {report['selection']['rule']}. Threshold {threshold:.4f} "
        f"is its calibrated default (FMR 1e-4 on the development impostor pairs)."
    )
    return intro + "\n\n" + _table(header, rows)


def _identification(report: dict) -> str:
    rows = []
    for name, variant in report["variants"].items():
        r = variant["identification"]
        rows.append(
            [
                f"`{name}`",
                str(r["gallery_size"]),
                str(r["mated_searches"]),
                str(r["non_mated_searches"]),
                _pct(r["rank1"]),
                _pct(r["fnir_at_fpir"]),
                f"{r['threshold_at_fpir']:.4f}",
            ]
        )
    header = [
        "Variant",
        "Gallery",
        "Mated searches",
        "Non-mated searches",
        "Rank-1",
        "FNIR @ FPIR 1e-2",
        "Threshold",
    ]
    target = _pct(report["targets"]["lfw_rank1"])
    return f"### 1:N on LFW (rank-1 target ≥ {target})\n\n" + _table(header, rows)


def _candidates(report: dict) -> str:
    rows = []
    for name, variant in report["variants"].items():
        cal = variant["calibration"]
        rows.append(
            [f"`{name}`" + (" (primary)" if name == report["primary"] else ""), str(variant["dim"])]
            + [_pct(variant[p]["accuracy"]) for p in NAMES]
            + [
                _pct(report["selection"]["dev_score"][name]),
                f"{cal['threshold']:.4f}",
                _pct(cal["fnmr"]),
            ]
        )
    header = ["Variant", "Dim", *NAMES.values(), "Dev score (CFP 1-5)", "Threshold @ FMR 1e-4", "Dev FNMR"]
    return "### Candidates (10-fold accuracy; thresholds calibrated on CFP 001-250)\n\n" + _table(
        header, rows
    )


def _encrypted(report: dict) -> str:
    if not report["encrypted"]:
        return ""
    rows = []
    for variant, protocols in report["encrypted"].items():
        for protocol, r in protocols.items():
            at = ", ".join(f"{v} at {k}" for k, v in r["decision_disagreements_at_threshold"].items())
            rows.append(
                [
                    f"`{variant}`",
                    NAMES[protocol],
                    str(r["pairs_scored"]),
                    str(r["decision_disagreements_protocol"]),
                    at,
                    f"{r['max_abs_difference']:.2e}",
                    _pct(r["accuracy_encrypted"], 3),
                    _pct(r["accuracy_plaintext"], 3),
                ]
            )
    header = [
        "Variant",
        "Benchmark",
        "Pairs scored",
        "Disagreements (fold thresholds)",
        "Disagreements (default threshold)",
        "Max abs(encrypted - plaintext)",
        "Accuracy encrypted",
        "Accuracy plaintext",
    ]
    return "### Encrypted vs plaintext\n\n" + _table(header, rows)


def _occluders(report: dict) -> str:
    by_kind = report["occlusion_by_kind"]
    kinds = report["occlusion"]["kinds"]
    rows = []
    for kind in kinds:
        row = [kind]
        for protocol in ("occ_lfw", "occ_cfp_fp"):
            r = by_kind[protocol].get(kind)
            row += [str(r["pairs"]), _pct(r["accuracy"])] if r else ["0", "-"]
        rows.append(row)
    header = ["Occluder", "Occ-LFW pairs", "Occ-LFW accuracy", "Occ-CFP-FP pairs", "Occ-CFP-FP accuracy"]
    seed = report["occlusion"]["seed"]
    return f"### Accuracy by occluder (`{report['primary']}`, seed {seed})\n\n" + _table(header, rows)


def _detection(report: dict) -> str:
    labels = {
        "lfw": "LFW images",
        "cfp": "CFP images",
        "occ_lfw": "Occ-LFW occluded",
        "occ_cfp_fp": "Occ-CFP-FP occluded",
    }
    rows = [
        [
            labels[name],
            str(r["images"]),
            str(r["no_face"]),
            str(r["several_faces"]),
            str(r["quality_rejected"]),
        ]
        for name, r in report["detection"].items()
    ]
    header = [
        "Image set",
        "Images",
        "No face found",
        "Several faces (main face kept)",
        "Rejected by the quality gate",
    ]
    return "### Detection and quality gate\n\n" + _table(header, rows)


def _plots(report: dict) -> str:
    lines = ["### Plots", ""]
    for protocol, files in report["plots"].items():
        roc, hist = (Path(files[k]).name for k in ("roc", "histogram"))
        lines.append(f"- {NAMES[protocol]}: [ROC](img/{roc}), [score histogram](img/{hist})")
    return "\n".join(lines)


def _provenance(report: dict) -> str:
    machine = report["machine"]
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    return (
        f"_Generated {report['generated']} on {machine['cpu_count']} × {machine['cpu_model']} "
        f"(load {machine['load_average_1m']}); {seconds}._"
    )
