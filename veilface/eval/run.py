"""``make eval``: every benchmark, every candidate recogniser, one pass over the images.

``python -m veilface.eval.run --out results/eval.json [--docs docs/accuracy.md] [--img-dir docs/img]
[--candidates V ...] [--primary V|auto] [--seed 0] [--processes 2] [--no-encrypted] [--per-fold N]``

1. Every LFW and CFP image goes once through the production face path (detection and alignment shared
   by all candidates); then the occluded copies (one image of each LFW and CFP-FP pair, see
   :mod:`veilface.eval.occlusion`) go through it too, placed with the landmarks found on the clean image.
2. For each candidate variant: a threshold calibrated at FMR 1e-4 on the development impostor pairs
   (CFP identities 001-250, frontal and profile), then 10-fold accuracy, TAR at FAR and the FMR/FNMR of
   that threshold on LFW, CFP-FF, CFP-FP, Occ-LFW and Occ-CFP-FP, and LFW 1:N.
3. The primary variant (``auto``: of the variants production can run, one model version, an
   ensemble version such as ``edgeface_xs_xxs`` included, with or without flip fusion, the best mean
   accuracy over the development splits 1-5 of CFP-FF and CFP-FP) is broken down by occluder and
   plotted. It and the configured recogniser (``VEILFACE_RECOGNIZER``) are also scored under CKKS
   encryption on LFW and CFP-FP.
4. ``--out`` gets the whole report as JSON; the generated section of ``--docs`` (between its markers)
   gets the tables. Embeddings only ever live in memory.

``--per-fold N`` keeps N pairs per fold and protocol: a smoke test whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from veilface.bench.embedder import machine_info
from veilface.config import Settings, load_settings
from veilface.eval import benchmarks
from veilface.eval.calibration import calibrate
from veilface.eval.encrypted import EncryptedPairScorer
from veilface.eval.extract import FaceExtractor, ImageJob, ImageResult, OcclusionSpec
from veilface.eval.identification import open_set_identification
from veilface.eval.occlusion import KINDS
from veilface.eval.pairs import PairOutcome, embed_images, evaluate_protocol
from veilface.eval.plots import plot_histogram, plot_roc
from veilface.eval.protocols import PairList
from veilface.eval.report import update_docs
from veilface.eval.scoring import detection_report, fold_thresholds
from veilface.eval.variants import Variant, all_members
from veilface.eval.verification import kfold_accuracy

DEFAULT_CANDIDATES = (
    "edgeface_xs",
    "edgeface_xs@noflip",
    "edgeface_xxs",
    "edgeface_xxs@noflip",
    "mobilefacenet",
    "mobilefacenet@noflip",
    "edgeface_xs_xxs",
    "edgeface_xs_xxs@noflip",
)
#: Accuracy targets of the issue, by protocol.
TARGETS = {"lfw": 0.996, "cfp_ff": 0.995, "cfp_fp": 0.965, "occ_lfw": 0.98}
TARGET_RANK1 = 0.99
CALIBRATION_FMR = 1e-4
IDENTIFICATION_FPIR = 1e-2
PROTOCOLS = ("lfw", "cfp_ff", "cfp_fp", "occ_lfw", "occ_cfp_fp")
ENCRYPTED_PROTOCOLS = ("lfw", "cfp_fp")


#: The image set each protocol draws from.
_SOURCE = {"lfw": "lfw", "cfp_ff": "cfp", "cfp_fp": "cfp", "occ_lfw": "lfw", "occ_cfp_fp": "cfp"}


class Benchmarks:
    """The images of every benchmark, analysed once, and the pair lists built on them."""

    def __init__(self, settings: Settings, variants: Sequence[Variant], *, seed: int, per_fold: int | None):
        data = settings.data_dir
        self.roots = {"lfw": data / "lfw" / "images", "cfp": data / "cfp" / "images"}
        self.seed = seed
        self.pairs = {
            "lfw": benchmarks.lfw(data),
            "cfp_ff": benchmarks.cfp(data, "FF"),
            "cfp_fp": benchmarks.cfp(data, "FP"),
        }
        if per_fold is not None:
            self.pairs = {name: _subset(pairs, per_fold) for name, pairs in self.pairs.items()}
            self.images = {
                "lfw": self.pairs["lfw"].images,
                "cfp": sorted(set(self.pairs["cfp_ff"].images) | set(self.pairs["cfp_fp"].images)),
            }
        else:
            lfw_root = self.roots["lfw"]
            self.images = {
                "lfw": sorted(str(p.relative_to(lfw_root)) for p in lfw_root.glob("*/*.jpg")),
                "cfp": benchmarks.cfp_images(data),
            }
        self.occluded = {
            "occ_lfw": benchmarks.occlude_one_side("lfw", self.pairs["lfw"], seed),
            "occ_cfp_fp": benchmarks.occlude_one_side("cfp", self.pairs["cfp_fp"], seed),
        }
        self.variants = list(variants)
        self.clean: dict[str, dict[str, ImageResult]] = {}
        self.occluded_results: dict[str, dict[str, ImageResult]] = {}

    def analyse(self, settings: Settings, processes: int) -> dict[str, float]:
        """Run every clean, then every occluded image through the face path; return seconds per set."""
        seconds = {}
        with FaceExtractor(settings, all_members(self.variants), processes=processes) as extractor:
            for source, images in self.images.items():
                start = time.perf_counter()
                self.clean[source] = embed_images(extractor, self.roots[source], images, desc=source)
                seconds[source] = time.perf_counter() - start
            for name, occluded in self.occluded.items():
                source = _SOURCE[name]
                paths = occluded.occluded_images
                landmarks = {p: self.clean[source][p].landmarks for p in paths}
                jobs = [
                    ImageJob(
                        self.roots[source] / p, OcclusionSpec(self.seed, KINDS, occluded.key(p), landmarks[p])
                    )
                    for p in paths
                ]
                start = time.perf_counter()
                self.occluded_results[name] = dict(zip(paths, extractor.run(jobs, desc=name), strict=True))
                seconds[name] = time.perf_counter() - start
        return seconds

    def labelled(self, protocol: str) -> PairList:
        return self.pairs[protocol] if protocol in self.pairs else self.occluded[protocol].pairs

    def embeddings(self, protocol: str, variant: Variant) -> tuple[list, list]:
        """Embeddings of the first and second image of every pair (``None`` without a face); in an
        occluded protocol, the occluded copy on the pair's occluded side."""
        clean = self.clean[_SOURCE[protocol]]
        pairs = self.labelled(protocol)
        if protocol in self.occluded:
            hidden, side = self.occluded_results[protocol], self.occluded[protocol].side
        else:
            hidden, side = clean, np.full(len(pairs), -1)
        first = [
            (hidden if s == 0 else clean)[p].embedding(variant)
            for p, s in zip(pairs.first, side, strict=True)
        ]
        second = [
            (hidden if s == 1 else clean)[p].embedding(variant)
            for p, s in zip(pairs.second, side, strict=True)
        ]
        return first, second

    def occluder_of_pair(self, protocol: str) -> list[str]:
        """The occluder drawn on each pair of an occluded protocol."""
        occluded, hidden = self.occluded[protocol], self.occluded_results[protocol]
        pairs = occluded.pairs
        return [
            hidden[b if s else a].occlusion or ""
            for a, b, s in zip(pairs.first, pairs.second, occluded.side, strict=True)
        ]

    def evaluate(
        self, protocol: str, variant: Variant, threshold: float, scorer: EncryptedPairScorer | None = None
    ) -> PairOutcome:
        pairs = self.labelled(protocol)
        first, second = self.embeddings(protocol, variant)
        return evaluate_protocol(
            pairs.labels, pairs.folds, first, second, threshold=threshold, scorer=scorer, desc=protocol
        )

    def calibration(self, variant: Variant):
        """Threshold at FMR 1e-4 over the development images (CFP identities 001-250)."""
        dev = [p for p in self.images["cfp"] if benchmarks.cfp_identity(p) <= benchmarks.CFP_DEV_IDENTITIES]
        results = self.clean["cfp"]
        return calibrate(
            [results[p].embedding(variant) for p in dev],
            [benchmarks.cfp_identity(p) for p in dev],
            CALIBRATION_FMR,
        )

    def identification(self, variant: Variant) -> dict:
        split = benchmarks.lfw_open_set(self.images["lfw"])
        results = self.clean["lfw"]
        enrolled = [(name, results[p].embedding(variant)) for name, p in split.gallery]
        enrolled = [(name, e) for name, e in enrolled if e is not None]
        outcome = open_set_identification(
            np.stack([e for _, e in enrolled]),
            [name for name, _ in enrolled],
            [results[p].embedding(variant) for _, p in split.mated],
            [name for name, _ in split.mated],
            [results[p].embedding(variant) for p in split.non_mated],
            IDENTIFICATION_FPIR,
        )
        return {**outcome.as_dict(), "identities_not_enrolled": len(split.gallery) - len(enrolled)}

    def dev_accuracy(self, outcome: PairOutcome, protocol: str) -> float:
        """k-fold accuracy over the development splits only (CFP splits 1-5, 5 folds)."""
        folds = self.pairs[protocol].folds
        dev = np.isin(folds, list(benchmarks.CFP_DEV_SPLITS))
        return kfold_accuracy(outcome.scores[dev], outcome.labels[dev], folds[dev]).mean

    def detection(self) -> dict:
        reports = {name: detection_report(list(results.values())) for name, results in self.clean.items()}
        for name, results in self.occluded_results.items():
            reports[name] = detection_report(list(results.values()))
            kinds = [r.occlusion for r in results.values()]
            reports[name]["occluders"] = {kind: kinds.count(kind) for kind in KINDS}
        return reports


def run_benchmarks(
    settings: Settings,
    candidates: Sequence[str],
    *,
    primary: str,
    seed: int,
    processes: int,
    encrypted: bool,
    per_fold: int | None,
    img_dir: Path,
) -> dict:
    """Everything ``make eval`` measures, as one JSON-ready dict (see the module docstring)."""
    started = time.perf_counter()
    variants = [Variant.parse(c, default_flip=settings.flip_fusion) for c in candidates]
    bench = Benchmarks(settings, variants, seed=seed, per_fold=per_fold)
    seconds = bench.analyse(settings, processes)
    results: dict[str, dict] = {}
    outcomes: dict[str, dict[str, PairOutcome]] = {}
    calibrations = {}
    for variant in variants:
        calibrations[variant.name] = cal = bench.calibration(variant)
        outcomes[variant.name] = {p: bench.evaluate(p, variant, cal.threshold) for p in PROTOCOLS}
        results[variant.name] = {
            "dim": next(e for e in bench.embeddings("lfw", variant)[0] if e is not None).shape[0],
            "calibration": cal.as_dict(),
            **{p: o.report for p, o in outcomes[variant.name].items()},
            "identification": bench.identification(variant),
            "dev_accuracy": {
                p: round(bench.dev_accuracy(outcomes[variant.name][p], p), 6) for p in ("cfp_ff", "cfp_fp")
            },
        }
    dev_score = {name: float(np.mean(list(r["dev_accuracy"].values()))) for name, r in results.items()}
    servable = [v.name for v in variants if len(v.members) == 1]  # an embedder runs one model version
    chosen = max(servable, key=dev_score.get) if primary == "auto" else primary
    if chosen not in results:
        raise SystemExit(f"primary variant {chosen!r} is not among the candidates")
    threshold = calibrations[chosen].threshold
    encrypted_reports: dict[str, dict] = {}
    if encrypted:
        start = time.perf_counter()
        for variant in variants:
            if variant.name not in (chosen, settings.recognizer):
                continue
            encrypted_reports[variant.name] = reports = {}
            dim = results[variant.name]["dim"]
            with EncryptedPairScorer(dim, processes=processes) as scorer:
                for protocol in ENCRYPTED_PROTOCOLS:
                    outcome = bench.evaluate(protocol, variant, calibrations[variant.name].threshold, scorer)
                    reports[protocol] = outcome.report["encrypted"]
        seconds["encrypted"] = time.perf_counter() - start
    by_kind = {}
    for protocol in ("occ_lfw", "occ_cfp_fp"):
        outcome, pairs = outcomes[chosen][protocol], bench.labelled(protocol)
        kfold = kfold_accuracy(outcome.scores, outcome.labels, pairs.folds)
        correct = (outcome.scores >= fold_thresholds(pairs.folds, kfold)) == outcome.labels
        kinds = np.array(bench.occluder_of_pair(protocol))
        by_kind[protocol] = {
            kind: {
                "pairs": int(np.sum(kinds == kind)),
                "accuracy": round(float(np.mean(correct[kinds == kind])), 6),
            }
            for kind in KINDS
            if np.any(kinds == kind)
        }
    plots = _plots(outcomes, chosen, threshold, img_dir)
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke_test": per_fold is not None,
        "machine": machine_info({"detector": "CPUExecutionProvider", "recognizer": "CPUExecutionProvider"}),
        "pipeline": {
            "detector": settings.detector,
            "flip_fusion_default": settings.flip_fusion,
            "face": "main",
        },
        "occlusion": {"seed": seed, "kinds": list(KINDS)},
        "targets": {**TARGETS, "lfw_rank1": TARGET_RANK1},
        "detection": bench.detection(),
        "selection": {
            "rule": "of the variants one model version makes (ensemble versions included), highest mean"
            " k-fold accuracy over CFP-FF and CFP-FP development splits 1-5",
            "dev_score": {k: round(v, 6) for k, v in dev_score.items()},
            "primary": chosen,
        },
        "primary": chosen,
        "variants": results,
        "encrypted": encrypted_reports,
        "occlusion_by_kind": by_kind,
        "plots": plots,
        "seconds": {k: round(v, 1) for k, v in {**seconds, "total": time.perf_counter() - started}.items()},
    }


def _plots(outcomes: dict[str, dict[str, PairOutcome]], chosen: str, threshold: float, img_dir: Path) -> dict:
    """Per protocol: ROC curves of the primary and the flip-fused candidates, the primary's histogram."""
    shown = [name for name in outcomes if "@noflip" not in name or name == chosen]
    plots = {}
    for protocol in PROTOCOLS:
        title = protocol.replace("_", "-").upper().replace("OCC-", "Occ-")
        roc = plot_roc(
            {n: (outcomes[n][protocol].scores, outcomes[n][protocol].labels) for n in shown},
            img_dir / f"{protocol}-roc.png",
            f"{title}: ROC",
        )
        main = outcomes[chosen][protocol]
        hist = plot_histogram(
            main.scores, main.labels, img_dir / f"{protocol}-hist.png", f"{title}: {chosen}", threshold
        )
        plots[protocol] = {"roc": str(roc), "histogram": str(hist)}
    return plots


def _subset(pairs: PairList, per_fold: int) -> PairList:
    """The first ``per_fold // 2`` mated and non-mated pairs of every fold."""
    keep = np.zeros(len(pairs), dtype=bool)
    for fold in np.unique(pairs.folds):
        for label in (True, False):
            keep[np.flatnonzero((pairs.folds == fold) & (pairs.labels == label))[: per_fold // 2]] = True
    return pairs.select(keep)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument(
        "--docs", type=Path, help="markdown to update (default docs/accuracy.md; none in a smoke test)"
    )
    parser.add_argument(
        "--img-dir", type=Path, help="folder of the PNG plots (default docs/img, or beside --out)"
    )
    parser.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES))
    parser.add_argument(
        "--primary", default="auto", help="variant scored under encryption (auto: best on dev)"
    )
    parser.add_argument("--seed", type=int, default=0, help="occlusion seed")
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-encrypted", action="store_true", help="skip the encrypted scoring")
    parser.add_argument("--per-fold", type=int, default=None, help="smoke test: pairs kept per fold")
    args = parser.parse_args(argv)
    smoke = args.per_fold is not None
    docs = args.docs or (None if smoke else Path("docs/accuracy.md"))
    img_dir = args.img_dir or (args.out.parent / "img" if smoke else Path("docs/img"))
    report = run_benchmarks(
        load_settings(),
        args.candidates,
        primary=args.primary,
        seed=args.seed,
        processes=args.processes,
        encrypted=not args.no_encrypted,
        per_fold=args.per_fold,
        img_dir=img_dir,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if docs is not None:
        update_docs(docs, report)
    print(f"wrote {args.out}" + (f" and {docs}" if docs else ""))


if __name__ == "__main__":
    main()
