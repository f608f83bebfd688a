"""Fit a compact-template projection on the development identities and calibrate its threshold.

``veilface models fit-projection pca128 --dim 128`` embeds every CFP photo of identities 001-250 (the
development set: never an evaluation pair of LFW, never CFP splits 6-7) with the base model through the
production face path, fits the principal components, projects the same faces and calibrates the
projection's threshold at FMR 1e-4 over their impostor pairs, as ``make eval`` does for the built-in
models. Embeddings stay in memory; only the projection (mean, matrix, threshold) is saved.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from veilface.config import Settings
from veilface.eval import benchmarks
from veilface.eval.calibration import Calibration, calibrate
from veilface.eval.extract import FaceExtractor
from veilface.eval.pairs import embed_images
from veilface.eval.variants import Variant
from veilface.models.projection import Projection, checked_name, fit_pca
from veilface.models.registry import ModelRegistry


def fit_projection(
    settings: Settings,
    name: str,
    base_version: str,
    dim: int,
    *,
    identities: int = benchmarks.CFP_DEV_IDENTITIES,
    processes: int = 2,
) -> tuple[Projection, Calibration]:
    """Fit ``name`` (``dim``-D PCA of ``base_version``) on CFP 001-250, calibrate it and save it.

    ``identities`` keeps only the first CFP identities (fewer than 250 for a quick test; never more).
    The threshold is rounded up to four decimals, so that its FMR stays at or below the target.
    Returns the saved projection and its calibration.
    """
    checked_name(name)  # before minutes of embedding
    if not 1 < identities <= benchmarks.CFP_DEV_IDENTITIES:
        raise ValueError(f"identities must be 2 to {benchmarks.CFP_DEV_IDENTITIES}, got {identities}")
    registry = ModelRegistry(settings)
    base = registry.get(base_version)
    variant = Variant.parse(base.version, default_flip=settings.flip_fusion)
    root = settings.data_dir / "cfp" / "images"
    dev = [
        path
        for path in benchmarks.cfp_images(settings.data_dir)
        if benchmarks.cfp_identity(path) <= identities
    ]
    with FaceExtractor(settings, variant.members, processes=processes) as extractor:
        results = embed_images(extractor, root, dev, desc=f"cfp 001-{identities:03d}")
    found = [(path, e) for path in dev if (e := results[path].embedding(variant)) is not None]
    embeddings = np.stack([e for _, e in found])
    projection = fit_pca(name, base.version, embeddings, dim)
    calibration = calibrate(
        list(projection.apply(embeddings)), [benchmarks.cfp_identity(path) for path, _ in found]
    )  # at calibrate's default FMR, 1e-4, as make eval calibrates the built-in models
    fitted = replace(projection, threshold=math.ceil(calibration.threshold * 1e4) / 1e4)
    fitted.save(registry.projections_path)
    return fitted, calibration
