"""The trainer end to end on real faces (CFP identities 001-006), then its parts one by one.

The smoke run aligns a handful of CFP photos with the production aligner, trains a tiny IR-ResNet for
two epochs with occluders and the pose mapping, exports it to ONNX, checks parity, registers it into a
temporary registry and serves a real face through it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from veilface.config import Settings, load_settings
from veilface.eval.occlusion import KINDS as EVAL_KINDS
from veilface.face import FacePipeline
from veilface.face.align import ARCFACE_TEMPLATE
from veilface.models.registry import ModelRegistry
from veilface.models.version import Preprocessing
from veilface.train.backbones import MEAN, STD, create_backbone, list_backbones
from veilface.train.build_lmdb import main as build_lmdb_main
from veilface.train.config import load_config
from veilface.train.dataset import FaceDataset, to_tensor
from veilface.train.facedb import FaceDB, IdentityRange, yaw_ratio
from veilface.train.losses import MarginHead
from veilface.train.occlusion import KINDS, TrainOccluder
from veilface.train.pose import DreamMapping
from veilface.train.trainer import run

pytestmark = pytest.mark.train

REPO = Path(__file__).resolve().parent.parent
SMOKE_CONFIG = REPO / "services" / "trainer" / "configs" / "ci_smoke.toml"
SHARED = load_settings()
CFP = SHARED.data_dir / "cfp" / "images"
LFW_PHOTO = SHARED.data_dir / "lfw" / "images" / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"


@pytest.fixture(scope="module")
def tiny_cfp(tmp_path_factory) -> Path:
    """CFP identities 001-006, two frontal and two profile photos each, in the CFP layout."""
    root = tmp_path_factory.mktemp("cfp")
    for identity in ("001", "002", "003", "004", "005", "006"):
        for pose in ("frontal", "profile"):
            (root / identity / pose).mkdir(parents=True)
            for number in ("01", "02"):
                shutil.copy(CFP / identity / pose / f"{number}.jpg", root / identity / pose)
    return root


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    """Shared models and data, with a temporary var folder and model registry."""
    tmp = tmp_path_factory.mktemp("trainer")
    environ = {**os.environ, "VEILFACE_VAR_DIR": str(tmp / "var"), "VEILFACE_MODEL_DIR": str(tmp / "models")}
    return load_settings(environ)


@pytest.fixture(scope="module")
def smoke(tiny_cfp: Path, settings: Settings) -> dict:
    out = settings.var_dir / "train" / "smoke"
    return run(load_config(SMOKE_CONFIG), tiny_cfp, out, settings)


def test_smoke_run_trains_validates_and_keeps_its_outputs(smoke: dict, settings: Settings) -> None:
    history = smoke["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(math.isfinite(loss) for h in history[1:] for loss in h["step_losses"])
    assert all(0.0 <= h["dev"]["accuracy"] <= 100.0 for h in history)
    out = settings.var_dir / "train" / "smoke"
    assert (out / "curves.png").stat().st_size > 10_000
    assert json.loads((out / "result.json").read_text())["version"] == smoke["version"]
    assert set(smoke["pose"]) == {"method", "kept", "dev_without", "dev_with"}


def test_onnx_export_matches_pytorch(smoke: dict) -> None:
    assert smoke["parity_max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(smoke["model_file"], providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape[1:], out.name, out.shape[1]) == ("input", [3, 112, 112], "embedding", 512)


def test_registered_model_serves_a_real_face(smoke: dict, settings: Settings) -> None:
    registry = ModelRegistry(settings)
    model = registry.get(smoke["version"])
    network = model.network
    assert network.path.parent == settings.models_path and not model.missing_files()
    assert network.preprocessing == Preprocessing(mean=MEAN, std=STD, colour_order="RGB")
    assert (network.input_name, network.output_name, model.dim) == ("input", "embedding", 512)
    assert model.threshold == pytest.approx(smoke["dev"]["threshold"], abs=1e-6)
    assert model.metrics["dev"] == smoke["dev"]
    assert len(model.data_digest) == 64
    assert registry.active().version != model.version  # registered, not activated
    pipeline = FacePipeline.from_model(settings, model)
    (face,) = pipeline.analyze(LFW_PHOTO.read_bytes())
    assert face.embedding.shape == (512,) and np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    assert registry.activate(model.version).version == registry.active().version == model.version


def test_an_interrupted_run_resumes_where_it_stopped(smoke: dict, tiny_cfp: Path, settings: Settings) -> None:
    config = load_config(SMOKE_CONFIG)
    out = settings.var_dir / "train" / "interrupted"
    stopped = run(config, tiny_cfp, out, settings, register_model=False, stop_after=1)
    assert stopped["stopped_after_epoch"] == 1 and not (out / "model.onnx").exists()
    resumed = run(config, tiny_cfp, out, settings, resume=True, register_model=False)
    # Same weights, optimiser state, shuffling and occluders: the same losses as the uninterrupted run.
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    losses = [loss for h in resumed["history"][1:] for loss in h["step_losses"]]
    assert losses == pytest.approx(
        [loss for h in smoke["history"][1:] for loss in h["step_losses"]], rel=1e-4
    )
    assert resumed["parity_max_abs_diff"] <= 1e-4
    longer = replace(config, optim=replace(config.optim, epochs=3))
    with pytest.raises(ValueError, match="another config"):
        run(longer, tiny_cfp, out, settings, resume=True, register_model=False)


def test_build_lmdb_tool_and_lmdb_layout(tiny_cfp: Path, tmp_path: Path, capsys) -> None:
    db_path = tmp_path / "faces.lmdb"
    build_lmdb_main(
        ["--src", str(tiny_cfp), "--out", str(db_path), "--identities", "005-006", "--workers", "0"]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["faces"] + summary["photos_without_face"] == 8 and summary["identities"] == 2
    db = FaceDB(db_path)
    crop = db.image(0)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    assert {r.identity for r in db.records} == {"005", "006"}
    frontal = [abs(r.yaw) for r in db.records if "frontal" in r.source]
    profile = [abs(r.yaw) for r in db.records if "profile" in r.source]
    assert max(frontal) < min(profile)
    dataset = FaceDataset(db, db.select(IdentityRange("006", "006")), [0] * 4)
    x, y = dataset[0]
    assert x.shape == (3, 112, 112) and float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and int(y) == 0


def test_yaw_ratio() -> None:
    assert yaw_ratio(ARCFACE_TEMPLATE) == pytest.approx(0.0, abs=0.01)
    turned = ARCFACE_TEMPLATE.copy()
    turned[2, 0] += 15.0  # nose towards the image's right
    assert yaw_ratio(turned) > 0.3 and yaw_ratio(turned * 3 + 50) == pytest.approx(yaw_ratio(turned))


@pytest.mark.parametrize(("kind", "expected"), [("arcface", math.cos(0.5)), ("cosface", 1.0 - 0.5)])
def test_margin_heads(kind: str, expected: float) -> None:
    head = MarginHead(4, 3, kind=kind, scale=10.0, margin=0.5)
    head.init_centres(torch.eye(3, 4))
    embeddings, labels = torch.eye(3, 4) * 5.0, torch.arange(3)  # each on its own centre: theta = 0
    logits = torch.tensor([[expected, 0.0, 0.0], [0.0, expected, 0.0], [0.0, 0.0, expected]]) * 10.0
    # cos(theta) is clamped just inside [-1, 1] before acos, hence the absolute tolerance.
    assert head(embeddings, labels).item() == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels)), abs=1e-5
    )
    with pytest.raises(ValueError, match="unknown margin head"):
        MarginHead(4, 3, kind="sphereface", scale=10.0, margin=0.5)


def test_backbones() -> None:
    assert {"ir50", "ir_tiny", "edgeface_xs", "edgeface_xxs"} <= set(list_backbones())
    tiny = create_backbone("ir_tiny", embedding_dim=128).eval()
    assert tiny(torch.zeros(2, 3, 112, 112)).shape == (2, 128)
    edgeface = create_backbone("edgeface_xs", weights=SHARED.shared_models_dir / "edgeface_xs.pt").eval()
    crop = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        ours = edgeface(to_tensor(crop)).numpy()
    shipped = ort.InferenceSession(
        str(SHARED.shared_models_dir / "edgeface_xs.onnx"), providers=["CPUExecutionProvider"]
    )
    assert np.abs(shipped.run(None, {"input": to_tensor(crop).numpy()})[0] - ours).max() < 1e-4
    with pytest.raises(KeyError, match="known"):
        create_backbone("resnet9000")


def test_train_occluder_is_seeded_and_uses_shapes_the_evaluation_does_not() -> None:
    assert not set(KINDS) & set(EVAL_KINDS)
    img = np.full((112, 112, 3), 128, dtype=np.uint8)
    occluder = TrainOccluder(seed=3)
    first, again = occluder(img, ARCFACE_TEMPLATE, key="a"), occluder(img, ARCFACE_TEMPLATE, key="a")
    assert np.array_equal(first, again) and not np.array_equal(first, img)
    assert not np.array_equal(first, TrainOccluder(seed=4)(img, ARCFACE_TEMPLATE, key="a"))
    with pytest.raises(ValueError, match="subset"):
        TrainOccluder(seed=3, kinds=("mask",))


def test_dream_mapping_starts_as_the_identity() -> None:
    embeddings = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    assert torch.allclose(DreamMapping(16, 8)(embeddings), embeddings, atol=1e-6)


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text('name = "x"\n[optim]\nepoch = 3\n')
    with pytest.raises(ValueError, match="unknown key"):
        load_config(path)
    assert IdentityRange.parse("001-250") == IdentityRange("001", "250")
    with pytest.raises(ValueError):
        IdentityRange.parse("250-001")
