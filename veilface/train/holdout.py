"""``python -m veilface.train.holdout``: trained and pretrained models on the evaluation identities only.

``make eval`` scores every CFP split, but the trainer fine-tunes on CFP identities 001-250 (splits 1-5),
so a trained model may only be judged on splits 6-7 (identities 251-350). This runs the evaluation
harness's own pieces (the production face path of :class:`~veilface.eval.extract.FaceExtractor`, its
pair lists, its occluder seed, kinds and occluded sides, its k-fold report) on:

* ``cfp_fp``: CFP frontal-profile pairs of splits 6-7 (the splits are the folds);
* ``occ_cfp_fp``: the same pairs with one image occluded, exactly as ``make eval``'s Occ-CFP-FP;
* ``lfw``: LFW View 2 (10 folds).

Each protocol's report also lists the pairs it got wrong (``misjudged``), to see where a model fails.

Usage: ``python -m veilface.train.holdout --candidates edgeface_xs VERSION ... --out FILE.json``.
Embeddings only live in memory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from veilface.bench.embedder import machine_info
from veilface.config import Settings, load_settings
from veilface.eval import benchmarks
from veilface.eval.extract import FaceExtractor, ImageJob, ImageResult, OcclusionSpec
from veilface.eval.occlusion import KINDS
from veilface.eval.pairs import default_threshold, embed_images, evaluate_protocol
from veilface.eval.protocols import PairList
from veilface.eval.scoring import fold_thresholds
from veilface.eval.variants import Variant, all_members
from veilface.eval.verification import kfold_accuracy

#: CFP splits no trained model has seen (identities 251-350).
EVAL_SPLITS = range(6, 8)
PROTOCOLS = ("cfp_fp", "occ_cfp_fp", "lfw")


def evaluate(
    settings: Settings, variants: Sequence[Variant], protocols: Sequence[str], *, seed: int, processes: int
) -> dict:
    """Scores of every variant on every protocol (see the module docstring), as a JSON-ready dict."""
    data = settings.data_dir
    cfp_root, lfw_root = data / "cfp" / "images", data / "lfw" / "images"
    # Sides are drawn over the whole CFP-FP list, as make eval does, then restricted to splits 6-7.
    everything = benchmarks.occlude_one_side("cfp", benchmarks.cfp(data, "FP"), seed)
    keep = np.isin(everything.pairs.folds, list(EVAL_SPLITS))
    occluded = benchmarks.OccludedPairs("cfp", everything.pairs.select(keep), everything.side[keep])
    cfp_pairs, lfw_pairs = occluded.pairs, benchmarks.lfw(data)
    cfp: dict[str, ImageResult] = {}
    hidden: dict[str, ImageResult] = {}
    lfw: dict[str, ImageResult] = {}
    with FaceExtractor(settings, all_members(variants), processes=processes) as extractor:
        if {"cfp_fp", "occ_cfp_fp"} & set(protocols):
            cfp = embed_images(extractor, cfp_root, cfp_pairs.images, desc="cfp 6-7")
        if "occ_cfp_fp" in protocols:
            paths = occluded.occluded_images
            jobs = [
                ImageJob(cfp_root / p, OcclusionSpec(seed, KINDS, occluded.key(p), cfp[p].landmarks))
                for p in paths
            ]
            hidden = dict(zip(paths, extractor.run(jobs, desc="occluded cfp 6-7"), strict=True))
        if "lfw" in protocols:
            lfw = embed_images(extractor, lfw_root, lfw_pairs.images, desc="lfw")
    results: dict[str, dict] = {}
    for variant in variants:
        threshold = default_threshold(settings, variant)
        results[variant.name] = {}
        for protocol in protocols:
            pairs = lfw_pairs if protocol == "lfw" else cfp_pairs
            clean = lfw if protocol == "lfw" else cfp
            side = occluded.side if protocol == "occ_cfp_fp" else np.full(len(pairs), -1)
            first, second = _pair_embeddings(pairs.first, pairs.second, side, clean, hidden, variant)
            outcome = evaluate_protocol(pairs.labels, pairs.folds, first, second, threshold=threshold)
            misjudged = misjudged_pairs(pairs, outcome.scores)
            results[variant.name][protocol] = {**outcome.report, "misjudged": misjudged}
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info({"detector": "CPUExecutionProvider", "recognizer": "CPUExecutionProvider"}),
        "cfp_splits": list(EVAL_SPLITS),
        "occlusion": {"seed": seed, "kinds": list(KINDS)},
        "variants": results,
    }


def misjudged_pairs(pairs: PairList, scores: np.ndarray) -> list[dict]:
    """The pairs that the k-fold thresholds decide wrongly, each pair by its own fold's threshold (as
    the k-fold accuracy counts them), the farthest from its threshold first."""
    thresholds = fold_thresholds(pairs.folds, kfold_accuracy(scores, pairs.labels, pairs.folds))
    wrong = np.flatnonzero((scores >= thresholds) != pairs.labels)
    wrong = wrong[np.argsort(-np.abs(scores[wrong] - thresholds[wrong]), kind="stable")]
    return [
        {
            "first": pairs.first[k],
            "second": pairs.second[k],
            "mated": bool(pairs.labels[k]),
            "score": round(float(scores[k]), 4),
        }
        for k in wrong
    ]


def _pair_embeddings(
    first: Sequence[str],
    second: Sequence[str],
    side: np.ndarray,
    clean: dict[str, ImageResult],
    hidden: dict[str, ImageResult],
    variant: Variant,
) -> tuple[list, list]:
    """The variant's embedding of each image of each pair, from ``hidden`` on the occluded ``side``."""

    def pick(paths: Sequence[str], which: int) -> list:
        return [
            (hidden if s == which else clean)[p].embedding(variant) for p, s in zip(paths, side, strict=True)
        ]

    return pick(first, 0), pick(second, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m veilface.train.holdout", description=__doc__)
    parser.add_argument("--candidates", nargs="+", required=True, help="VERSION[@flip|@noflip][+...]")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--seed", type=int, default=0, help="occlusion seed (make eval's default: 0)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = load_settings()
    variants = [Variant.parse(c, default_flip=settings.flip_fusion) for c in args.candidates]
    report = evaluate(settings, variants, args.protocols, seed=args.seed, processes=args.processes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, protocols in report["variants"].items():
        print(
            name,
            {p: f"{100 * r['accuracy']:.2f} ({len(r['misjudged'])} misjudged)" for p, r in protocols.items()},
        )


if __name__ == "__main__":
    main()
