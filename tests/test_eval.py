"""The evaluation protocol code: pair files, folds, thresholds, TAR@FAR, 1:N, occlusion, encrypted scores.

Metric tests use synthetic scores with known answers; the end-to-end ones run the real face path on a
few LFW photos (40 pairs) and score some of them under encryption.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from veilface.cli import main
from veilface.config import load_settings
from veilface.eval import benchmarks
from veilface.eval.calibration import calibrate
from veilface.eval.encrypted import EncryptedPairScorer
from veilface.eval.extract import FaceExtractor, ImageJob, OcclusionSpec
from veilface.eval.identification import open_set_identification
from veilface.eval.occlusion import KINDS, Occluder, landmarks_from_geometry
from veilface.eval.protocols import PairList, read_pair_file, read_pairs
from veilface.eval.scoring import cosine_scores, verification_report
from veilface.eval.variants import Member, Variant, all_members
from veilface.eval.verification import (
    NO_FACE_SCORE,
    best_threshold,
    kfold_accuracy,
    make_folds,
    roc_curve,
    tar_at_far,
    threshold_at_far,
)
from veilface.models.registry import ModelRegistry
from veilface.train.holdout import misjudged_pairs

SETTINGS = load_settings()
DATA = SETTINGS.data_dir
LFW_PAIRS = DATA / "lfw" / "pairs.txt"
needs_data = pytest.mark.skipif(
    not (LFW_PAIRS.exists() and SETTINGS.shared_models_dir.exists()),
    reason="shared data or models not available",
)


# -- pair files -------------------------------------------------------------------------------------


@needs_data
def test_lfw_pairs_file_gives_identity_disjoint_folds():
    pairs = read_pair_file(LFW_PAIRS, DATA / "lfw" / "images")
    assert len(pairs) == 6000 and pairs.labels.sum() == 3000
    assert np.bincount(pairs.folds).tolist() == [0] + [600] * 10
    names = {}
    for a, b, fold in zip(pairs.first, pairs.second, pairs.folds, strict=True):
        for path in (a, b):
            assert names.setdefault(path.split("/")[0], fold) == fold
    assert all((pairs.root / p).exists() for p in pairs.images[:50])


def test_official_lfw_header(tmp_path):
    text = "2 2\nA 1 2\nB 1 3\nA 1 C 1\nB 2 D 4\nE 1 2\nF 3 4\nE 1 G 2\nF 1 H 1\n"
    (tmp_path / "pairs.txt").write_text(text)
    pairs = read_pair_file(tmp_path / "pairs.txt", tmp_path)
    assert pairs.folds.tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert pairs.labels.tolist() == [True, True, False, False] * 2
    assert pairs.first[0] == "A/A_0001.jpg" and pairs.second[3] == "D/D_0004.jpg"
    (tmp_path / "bad.txt").write_text("2 2\nA 1 2\nA 1 C 1\n")
    with pytest.raises(ValueError, match="layout"):
        read_pair_file(tmp_path / "bad.txt", tmp_path)


def test_generic_pairs_with_and_without_folds(tmp_path):
    (tmp_path / "plain.txt").write_text("# comment\na.jpg b.jpg 1\na.jpg c.jpg 0  # trailing\n\n")
    plain = read_pairs(tmp_path / "plain.txt", tmp_path)
    assert plain.folds is None and plain.labels.tolist() == [True, False]
    assert plain.images == ["a.jpg", "b.jpg", "c.jpg"]
    (tmp_path / "folds.txt").write_text("3 a.jpg b.jpg 1\n4 a.jpg c.jpg 0\n")
    assert read_pair_file(tmp_path / "folds.txt", tmp_path).folds.tolist() == [3, 4]
    (tmp_path / "mixed.txt").write_text("3 a.jpg b.jpg 1\na.jpg c.jpg 0\n")
    with pytest.raises(ValueError, match="every line or none"):
        read_pairs(tmp_path / "mixed.txt", tmp_path)
    (tmp_path / "label.txt").write_text("a.jpg b.jpg 2\n")
    with pytest.raises(ValueError, match="label"):
        read_pairs(tmp_path / "label.txt", tmp_path)


@needs_data
def test_cfp_splits():
    fp = benchmarks.cfp(DATA, "FP", splits=range(6, 8))
    assert len(fp) == 1400 and set(fp.folds) == {6, 7}
    assert all(benchmarks.cfp_identity(p) > 250 for p in fp.images)
    assert "profile" in fp.second[0]


# -- verification metrics ---------------------------------------------------------------------------


def test_make_folds_is_deterministic_and_interleaved():
    folds = make_folds(25)
    assert folds.tolist()[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2]
    assert np.array_equal(folds, make_folds(25))
    with pytest.raises(ValueError):
        make_folds(5)


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.5
    scores = np.round(rng.normal(labels * 0.6, 0.3), 2)  # rounding makes ties
    threshold, acc = best_threshold(scores, labels)
    candidates = np.concatenate([np.unique(scores), [scores.max() + 1]])
    assert acc == pytest.approx(max(np.mean((scores >= t) == labels) for t in candidates))
    assert np.mean((scores >= threshold) == labels) == pytest.approx(acc)
    assert threshold not in set(scores)


def test_kfold_threshold_comes_from_the_other_folds():
    # Folds 1-3 separate at 0.5; fold 4 alone would prefer 0.85. Fold 4 must be tested at ~0.5.
    scores = np.array([0.6, 0.4, 0.7, 0.3, 0.65, 0.35, 0.9, 0.8])
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    folds = np.array([1, 1, 2, 2, 3, 3, 4, 4])
    result = kfold_accuracy(scores, labels, folds)
    assert result.folds == (1, 2, 3, 4)
    assert result.thresholds[3] < 0.7 and result.accuracies[3] == 0.5
    assert result.accuracies[:3] == (1.0, 1.0, 1.0)
    assert result.mean == pytest.approx(0.875) and result.std == pytest.approx(np.std([1, 1, 1, 0.5]))


def test_misjudged_pairs_are_the_errors_the_kfold_accuracy_counts():
    pairs = benchmarks.cfp(DATA, "FP", splits=range(6, 8))
    rng = np.random.default_rng(5)
    scores = rng.normal(np.where(pairs.labels, 0.45, 0.05), 0.12)
    kfold = kfold_accuracy(scores, pairs.labels, pairs.folds)
    misjudged = misjudged_pairs(pairs, scores)
    per_fold = zip(kfold.folds, kfold.accuracies, strict=True)
    errors = sum(round((1 - accuracy) * np.sum(pairs.folds == fold)) for fold, accuracy in per_fold)
    assert 0 < len(misjudged) == errors
    index = {(a, b): k for k, (a, b) in enumerate(zip(pairs.first, pairs.second, strict=True))}
    cut = dict(zip(kfold.folds, kfold.thresholds, strict=True))
    distances = []
    for pair in misjudged:
        k = index[pair["first"], pair["second"]]
        threshold = cut[int(pairs.folds[k])]
        assert pair["mated"] == bool(pairs.labels[k]) != (scores[k] >= threshold)
        assert pair["score"] == round(float(scores[k]), 4)
        distances.append(abs(scores[k] - threshold))
    assert distances == sorted(distances, reverse=True)  # the worst first


def test_tar_at_far():
    negatives = np.linspace(0.0, 0.5, 1000)
    positives = np.linspace(0.3, 1.0, 100)
    scores = np.concatenate([negatives, positives])
    labels = np.r_[np.zeros(1000, bool), np.ones(100, bool)]
    tar, threshold = tar_at_far(scores, labels, 1e-2)
    assert np.sum(negatives >= threshold) == 10 and np.sum(negatives >= np.nextafter(threshold, -1)) == 11
    assert tar == pytest.approx(np.mean(positives >= threshold))
    # Below the resolution 1/n no impostor may pass: the threshold sits just above the highest one.
    assert threshold_at_far(negatives, 1e-4) == np.nextafter(0.5, 1)
    far, tpr, _ = roc_curve(scores, labels)
    assert far[-1] == 1.0 and tpr[-1] == 1.0 and np.all(np.diff(far) >= 0)


def test_missing_face_counts_as_error_and_is_never_dropped():
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(4, 8))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    first = [unit[0], None, unit[2], None]
    second = [unit[0], unit[1], unit[3], unit[3]]
    scores = cosine_scores(first, second)
    assert scores[1] == scores[3] == NO_FACE_SCORE and scores[0] == pytest.approx(1.0)
    labels = np.array([True, True, False, False])
    report = verification_report(np.tile(scores, 5), np.tile(labels, 5), np.repeat(np.arange(1, 6), 4))
    assert report["pairs"] == 20
    assert report["accuracy"] == pytest.approx(0.75)  # every mated pair without a face is wrong


def test_open_set_identification():
    eye = np.eye(4, dtype=np.float32)
    result = open_set_identification(
        gallery=eye[:3],
        gallery_ids=["a", "b", "c"],
        mated=[eye[0], eye[1] * 0.6 + eye[3] * 0.8, None, eye[2]],
        mated_ids=["a", "b", "b", "d"],  # "d" was never enrolled: always a miss
        non_mated=[eye[3], None, (eye[0] + eye[3]) / np.sqrt(2)],
        fpir=0.4,
    )
    assert result.rank1 == pytest.approx(2 / 4)
    # One false positive of three allowed: the threshold sits just above the second best, 0.
    assert result.threshold == np.nextafter(0.0, 1.0)
    assert result.fnir == pytest.approx(2 / 4)


def test_calibration_on_synthetic_identities():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(30, 64))
    ids = np.repeat(np.arange(30), 5)
    vectors = centres[ids] + rng.normal(scale=0.5, size=(150, 64))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = [*vectors.astype(np.float32), None]
    cal = calibrate(embeddings, [*ids, 99], target_fmr=1e-3)
    assert cal.images_without_face == 1 and cal.impostor_pairs == 150 * 149 // 2 - 30 * 10
    assert cal.fmr <= 1e-3 and cal.genuine_pairs == 300


def test_variants_compose_to_unit_vectors():
    variant = Variant.parse("edgeface_xs+edgeface_xxs@noflip")
    assert variant.members == (Member("edgeface_xs", True), Member("edgeface_xxs", False))
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    joined = variant.compose({variant.members[0]: a, variant.members[1]: b})
    assert joined.shape == (8,) and np.linalg.norm(joined) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Variant.parse("edgeface_xs@maybe")


# -- occlusion --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def face_image() -> np.ndarray:
    path = DATA / "lfw" / "images" / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"
    if not path.exists():
        pytest.skip("LFW not available")
    return cv2.imread(str(path))


def test_occlusion_is_deterministic(face_image):
    landmarks = landmarks_from_geometry(face_image.shape, 0.45)
    a = Occluder(seed=5)(face_image, landmarks, key="x")
    b = Occluder(seed=5)(face_image, landmarks, key="x")
    assert a.kind == b.kind and np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, face_image) and a.image.shape == face_image.shape
    others = {Occluder(seed=5)(face_image, landmarks, key=k).image.tobytes() for k in "abcdef"}
    assert len(others) == 6
    assert not np.array_equal(Occluder(seed=6)(face_image, landmarks, key="x").image, a.image)
    # Without keys, two occluders of the same seed draw the same stream.
    first, second = Occluder(seed=9), Occluder(seed=9)
    for _ in range(3):
        assert np.array_equal(first(face_image, landmarks).image, second(face_image, landmarks).image)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_covers_part_of_the_face(face_image, kind):
    landmarks = landmarks_from_geometry(face_image.shape, 0.45)
    occluded = Occluder(seed=1, kinds=(kind,))(face_image, landmarks, key="k")
    assert occluded.kind == kind
    changed = np.any(occluded.image != face_image, axis=2)
    face = np.zeros_like(changed)
    x0, y0 = landmarks.min(axis=0).astype(int) - 20
    x1, y1 = landmarks.max(axis=0).astype(int) + 20
    face[y0:y1, x0:x1] = True
    assert 0.04 < changed[face].mean() < 0.9  # a real part of the face, not all of it
    assert changed[~face].mean() < changed[face].mean()


def test_occluder_rejects_unknown_kinds():
    with pytest.raises(ValueError):
        Occluder(seed=0, kinds=("scarf",))


# -- the real face path, plaintext and encrypted ----------------------------------------------------


@pytest.fixture(scope="module")
def lfw40() -> PairList:
    """The first 20 matched and 20 mismatched pairs of LFW's first fold."""
    if not LFW_PAIRS.exists():
        pytest.skip("LFW not available")
    pairs = read_pair_file(LFW_PAIRS, DATA / "lfw" / "images")
    keep = np.zeros(len(pairs), dtype=bool)
    keep[np.flatnonzero(pairs.labels)[:20]] = True
    keep[np.flatnonzero(~pairs.labels)[:20]] = True
    return pairs.select(keep)


XS, XXS, ENSEMBLE = (Variant.parse(v) for v in ("edgeface_xs", "edgeface_xxs", "edgeface_xs_xxs"))


@pytest.fixture(scope="module")
def lfw40_results(lfw40):
    """Every image of ``lfw40`` embedded by both built-in networks and by the ensemble version."""
    root = lfw40.root
    first = lfw40.first[0]
    with FaceExtractor(SETTINGS, all_members([XS, XXS, ENSEMBLE]), processes=2) as extractor:
        results = extractor.run([ImageJob(root / p) for p in lfw40.images])
        occluded = extractor.run([ImageJob(root / first, OcclusionSpec(0, KINDS, "k", None))] * 2)
    return dict(zip(lfw40.images, results, strict=True)), occluded


def pair_embeddings(lfw40, results, variant: Variant) -> tuple[list, list]:
    """The variant's embeddings of the first and of the second image of each pair."""
    return [results[p].embedding(variant) for p in lfw40.first], [
        results[p].embedding(variant) for p in lfw40.second
    ]


@pytest.fixture(scope="module")
def lfw40_embeddings(lfw40, lfw40_results):
    results, occluded = lfw40_results
    return *pair_embeddings(lfw40, results, XS), occluded


@needs_data
def test_real_pairs_through_the_pipeline(lfw40, lfw40_embeddings):
    first, second, occluded = lfw40_embeddings
    scores = cosine_scores(first, second)
    assert not np.any(scores == NO_FACE_SCORE)
    report = verification_report(scores, lfw40.labels, make_folds(len(lfw40)))
    assert report["accuracy"] >= 0.95
    # The same occlusion job gives the same image, hence the same embedding, in any worker.
    assert occluded[0].occlusion == occluded[1].occlusion
    assert np.array_equal(
        occluded[0].embedding(Variant.parse("edgeface_xs")),
        occluded[1].embedding(Variant.parse("edgeface_xs")),
    )


@needs_data
def test_the_ensemble_version_is_its_members_joined(lfw40_results):
    results, _ = lfw40_results
    for result in results.values():
        joined = np.concatenate([result.embedding(XS), result.embedding(XXS)]) / np.sqrt(2)
        np.testing.assert_allclose(result.embedding(ENSEMBLE), joined, atol=1e-6)


@needs_data
@pytest.mark.parametrize(("variant", "dim"), [(XS, 512), (ENSEMBLE, 1024)], ids=["512-D", "1024-D ensemble"])
def test_encrypted_scores_agree_with_plaintext(lfw40, lfw40_results, variant, dim):
    first, second = pair_embeddings(lfw40, lfw40_results[0], variant)
    assert first[0].shape == (dim,)
    picked = [0, 1, 2, 20, 21, 22]  # three mated, three non-mated
    plain = cosine_scores([first[k] for k in picked], [second[k] for k in picked])
    with EncryptedPairScorer(dim, processes=1) as scorer:
        encrypted = scorer.score([(first[k], second[k]) for k in picked])
    assert np.max(np.abs(encrypted - plain)) < 1e-4
    threshold = best_threshold(plain, lfw40.labels[picked])[0]
    assert np.array_equal(encrypted >= threshold, plain >= threshold)


@needs_data
def test_cli_counts_a_missing_face_as_an_error(tmp_path):
    root = tmp_path / "images"
    for name, number in [
        ("Abel_Pacheco", 1),
        ("Abel_Pacheco", 4),
        ("Akhmed_Zakayev", 1),
        ("Akhmed_Zakayev", 3),
    ]:
        target = root / name / f"{name}_{number:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(DATA / "lfw" / "images" / name / target.name)
    cv2.imwrite(str(root / "blank.jpg"), np.full((200, 200, 3), 128, np.uint8))
    a1, a4 = "Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    z1, z3 = "Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0003.jpg"
    lines = [f"1 {a1} {a4} 1", f"1 {a1} {z1} 0", f"1 blank.jpg {a4} 1", f"2 {z1} {z3} 1", f"2 {z3} {a4} 0"]
    lines.append(f"2 blank.jpg {z3} 0")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.json"
    args = ["eval", "pairs", "--pairs", str(tmp_path / "pairs.txt"), "--root", str(root), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--model", "edgeface_xs", "--encrypted"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["detection"]["no_face"] == 1
    assert report["pairs_without_face"] == {"mated": 1, "non_mated": 1}
    assert report["folds_from_file"] and [f["fold"] for f in report["folds"]] == [1, 2]
    assert report["folds"][0]["accuracy"] <= 2 / 3 + 1e-6  # the mated pair without a face is an error
    assert report["encrypted"]["decision_disagreements_protocol"] == 0
    assert report["encrypted"]["pairs_scored"] == 4
    assert Path(report["plots"]["roc"]).exists() and Path(report["plots"]["histogram"]).exists()


def test_cli_refuses_a_bad_pair_file_without_a_traceback(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((8, 8, 3), 128, np.uint8))
    cases = {
        "a.jpg a.jpg 2\n": "label must be 0 or 1",
        "a.jpg gone/b.jpg 1\n": "1 image(s) not found",
    }
    for text, reason in cases.items():
        (tmp_path / "pairs.txt").write_text(text)
        args = ["eval", "pairs", "--pairs", str(tmp_path / "pairs.txt"), "--root", str(tmp_path)]
        result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "report.json")])
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--pairs'" in result.output and reason in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "report.json").exists()


@needs_data
def test_fit_projection_registers_a_calibrated_compact_version(tmp_path):
    env = {"VEILFACE_MODEL_DIR": str(tmp_path / "models")}
    args = ["models", "fit-projection", "pca16", "--dim", "16", "--base", "edgeface_xs", "--identities", "3"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["version"] == "edgeface_xs:pca16" and summary["dim"] == 16
    assert summary["calibration"]["images"] == 42 and summary["calibration"]["fmr"] <= 1e-4
    settings = load_settings({**os.environ, **env})
    model = ModelRegistry(settings).get("edgeface_xs:pca16")
    assert model.dim == 16 and model.threshold >= summary["calibration"]["threshold"]
    projected = ModelRegistry(settings).projection("pca16").apply(np.eye(512, dtype=np.float32)[:3])
    assert projected.shape == (3, 16) and np.allclose(np.linalg.norm(projected, axis=1), 1.0)
    bad = CliRunner().invoke(main, [*args[:-1], "251"], env=env)
    assert bad.exit_code != 0 and "identities must be 2 to 250" in str(bad.exception)
