"""The model registry: one description per version (network, preprocessing, threshold), declared once
for the built-ins, stored whole in ``registry.json``, read from the first format, and checked for
missing files by ``/readyz``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from veilface import errors
from veilface.api import create_app
from veilface.cli import main
from veilface.config import Settings, load_settings
from veilface.models.builtins import BUILTINS, builtin
from veilface.models.projection import Projection
from veilface.models.registry import FORMAT, ModelRegistry
from veilface.models.version import (
    Ensemble,
    EnsembleMember,
    ModelVersion,
    OnnxNetwork,
    Preprocessing,
    Projected,
    network_from_dict,
)
from veilface.store.db import create_schema, make_engine

SHARED_MODELS = load_settings().shared_models_dir
ADMIN_KEY = "registry-admin-" + "a" * 24
BGR = Preprocessing(mean=0.0, std=255.0, colour_order="BGR")


def settings_for(tmp_path: Path, shared_dir: Path | None = None) -> Settings:
    """Settings with a registry of their own in ``tmp_path`` and the shared folder ``shared_dir``."""
    environ = {
        "VEILFACE_VAR_DIR": str(tmp_path),
        "VEILFACE_SHARED_DIR": str(shared_dir or tmp_path / "shared"),
    }
    return load_settings(environ)


def trained(settings: Settings, name: str, **kwargs) -> ModelVersion:
    """A trained version whose ONNX file exists in the registry folder (its bytes are never run)."""
    path = settings.models_path / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"onnx")
    network = OnnxNetwork(str(path), dim=256, preprocessing=BGR, output_name="features")
    return ModelVersion(name, threshold=0.42, network=network, **kwargs)


def test_every_builtin_resolves_to_files_in_the_shared_models_folder(tmp_path: Path):
    settings = settings_for(tmp_path, shared_dir=tmp_path / "elsewhere")
    registry = ModelRegistry(settings)
    folder = tmp_path / "elsewhere" / "models"
    assert [model.version for model in registry.versions()] == list(BUILTINS)
    xs = registry.get("edgeface_xs")
    assert xs.network == builtin("edgeface_xs").network.located(folder)
    assert xs.network.path == folder / "edgeface_xs.onnx" and xs.threshold == 0.3356 and xs.dim == 512
    assert registry.get("mobilefacenet").network.preprocessing == Preprocessing(mean=127.5, std=128.0)
    ensemble = registry.get("edgeface_xs_xxs")
    assert isinstance(ensemble.network, Ensemble) and ensemble.dim == 1024
    assert ensemble.network.versions == ("edgeface_xs", "edgeface_xxs")
    assert [m.network.path for m in ensemble.network.members] == [
        folder / "edgeface_xs.onnx",
        folder / "edgeface_xxs.onnx",
    ]
    assert registry.active().version == settings.recognizer == "edgeface_xs_xxs"
    with pytest.raises(errors.NotFound, match="facenet"):
        registry.get("facenet")
    with pytest.raises(KeyError, match="edgeface_xs"):
        builtin("facenet")


@pytest.mark.skipif(not SHARED_MODELS.exists(), reason="shared models not available")
def test_the_builtins_miss_no_file_in_the_real_shared_folder():
    registry = ModelRegistry(load_settings())
    assert {model.version: model.missing_files() for model in registry.versions()} == {
        name: [] for name in BUILTINS
    }


def test_every_kind_of_network_survives_its_json_form():
    member = EnsembleMember("a", OnnxNetwork("a.onnx", dim=128, preprocessing=BGR, batch_fixed=True))
    ensemble = Ensemble((member, EnsembleMember("b", builtin("edgeface_xs").network)))
    for network in (member.network, ensemble, Projected(ensemble, "pca64", 64)):
        model = ModelVersion("v", threshold=0.5, network=network, metrics={"dev": {"eer": 0.1}})
        text = json.dumps(model.as_dict())
        assert ModelVersion.from_dict(json.loads(text)) == model
    assert ensemble.dim == 640
    with pytest.raises(ValueError, match="unknown network kind 'torch'"):
        network_from_dict({"kind": "torch"})
    with pytest.raises(ValueError, match="colour order"):
        Preprocessing(mean=0.0, std=1.0, colour_order="RBG")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two members"):
        Ensemble((member,))


def test_registry_json_stores_the_whole_description_and_reads_it_back(tmp_path: Path):
    settings = settings_for(tmp_path)
    registry = ModelRegistry(settings)
    model = trained(settings, "mine-1", metrics={"dev": {"accuracy": 99.0}}, data_digest="d" * 64)
    registry.register(model, activate=True)
    stored = json.loads((settings.models_path / "registry.json").read_text())
    assert stored["format"] == FORMAT and stored["active"] == "mine-1"
    assert stored["versions"]["mine-1"]["network"] == {
        "kind": "onnx",
        "file": model.network.file,
        "dim": 256,
        "preprocessing": {"mean": 0.0, "std": 255.0, "colour_order": "BGR", "input_size": [112, 112]},
        "input_name": "input",
        "output_name": "features",
        "batch_fixed": False,
    }
    assert ModelRegistry(settings).get("mine-1") == model == registry.active()
    assert [m.version for m in registry.versions()] == ["mine-1", *BUILTINS]


def test_a_relative_file_is_in_the_registry_folder(tmp_path: Path):
    settings = settings_for(tmp_path)
    network = OnnxNetwork("relative.onnx", dim=512, preprocessing=BGR)
    ModelRegistry(settings).register(ModelVersion("rel", threshold=0.3, network=network))
    assert ModelRegistry(settings).get("rel").network.path == settings.models_path / "relative.onnx"


def test_a_registry_of_the_first_format_keeps_loading(tmp_path: Path):
    """``registry.json`` as the trainer wrote it before versions carried their preprocessing: a
    version named the built-in spec whose input it takes, an ensemble had ``spec`` "ensemble"."""
    settings = settings_for(tmp_path)
    onnx = settings.models_path / "old-1.onnx"
    old = {
        "active": "old-pair",
        "versions": {
            "old-1": {
                "version": "old-1",
                "spec": "edgeface_xs",
                "file": str(onnx),
                "dim": 512,
                "threshold": 0.31,
                "metrics": {"dev": {"accuracy": 97.5}},
                "data_digest": "e" * 64,
                "members": [],
            },
            "old-pair": {
                "version": "old-pair",
                "spec": "ensemble",
                "file": "",
                "dim": 640,
                "threshold": 0.3,
                "metrics": {},
                "data_digest": None,
                "members": ["old-1", "mobilefacenet"],
            },
        },
    }
    settings.models_path.mkdir(parents=True)
    (settings.models_path / "registry.json").write_text(json.dumps(old))
    registry = ModelRegistry(settings)

    first = registry.get("old-1")
    assert first.network == OnnxNetwork(
        str(onnx), dim=512, preprocessing=Preprocessing(mean=127.5, std=127.5)
    )
    assert (first.threshold, first.metrics, first.data_digest) == (
        0.31,
        {"dev": {"accuracy": 97.5}},
        "e" * 64,
    )
    pair = registry.active()
    assert pair.version == "old-pair" and isinstance(pair.network, Ensemble) and pair.dim == 640
    assert pair.network.members[0] == EnsembleMember("old-1", first.network)
    assert pair.network.members[1].network.path == settings.shared_models_dir / "mobilefacenet.onnx"
    assert pair.network.members[1].network.batch_fixed
    assert "format" not in json.loads((settings.models_path / "registry.json").read_text())  # read only

    registry.activate("old-1")  # the next write stores the current format, the same versions
    stored = json.loads((settings.models_path / "registry.json").read_text())
    assert stored["format"] == FORMAT and stored["active"] == "old-1"
    assert ModelRegistry(settings).get("old-pair") == pair and ModelRegistry(settings).get("old-1") == first


def test_a_registry_of_an_unknown_format_is_refused(tmp_path: Path):
    settings = settings_for(tmp_path)
    settings.models_path.mkdir(parents=True)
    (settings.models_path / "registry.json").write_text(
        json.dumps({"format": 99, "active": None, "versions": {}})
    )
    with pytest.raises(ValueError, match="format 99"):
        ModelRegistry(settings).active()


def test_missing_files_are_named_for_a_network_and_every_member_of_an_ensemble(tmp_path: Path):
    settings = settings_for(tmp_path)  # an empty shared folder
    registry = ModelRegistry(settings)
    folder = settings.shared_models_dir
    assert registry.get("edgeface_xs_xxs").missing_files() == [
        folder / "edgeface_xs.onnx",
        folder / "edgeface_xxs.onnx",
    ]
    model = trained(settings, "mine-2")
    registry.register(model)
    assert registry.get("mine-2").missing_files() == []
    model.network.path.unlink()
    assert registry.get("mine-2").missing_files() == [model.network.path]


def test_a_projected_version_keeps_its_base_network_with_the_projections_size(tmp_path: Path):
    settings = settings_for(tmp_path)
    registry = ModelRegistry(settings)
    matrix = np.eye(512, 64, dtype=np.float32)
    Projection("pca64", "edgeface_xs", np.zeros(512, np.float32), matrix, 0.25).save(
        registry.projections_path
    )
    projected = registry.get("edgeface_xs:pca64")
    assert projected.network == Projected(registry.get("edgeface_xs").network, "pca64", 64)
    assert (projected.version, projected.dim, projected.threshold) == ("edgeface_xs:pca64", 64, 0.25)
    with pytest.raises(errors.NotFound, match="fitted for edgeface_xs"):
        registry.get("mobilefacenet:pca64")


def test_models_show_prints_the_description_as_json(tmp_path: Path):
    environ = {"VEILFACE_VAR_DIR": str(tmp_path), "VEILFACE_SHARED_DIR": str(tmp_path / "shared")}
    shown = CliRunner().invoke(main, ["models", "show", "edgeface_xs_xxs"], env=environ)
    assert shown.exit_code == 0, shown.output
    description = json.loads(shown.output)
    assert ModelVersion.from_dict(description) == ModelRegistry(settings_for(tmp_path)).get("edgeface_xs_xxs")
    assert [m["version"] for m in description["network"]["members"]] == ["edgeface_xs", "edgeface_xxs"]
    unknown = CliRunner().invoke(main, ["models", "show", "facenet"], env=environ)
    assert unknown.exit_code != 0 and isinstance(unknown.exception, errors.NotFound)


def test_readyz_names_the_missing_files_of_the_active_version(tmp_path: Path, key_dir: Path):
    """An ensemble has no file of its own: its members' files are what must exist (the check used to
    test ``Path("")``, which always exists)."""
    environ = {
        "VEILFACE_VAR_DIR": str(tmp_path),
        "VEILFACE_KEY_DIR": str(key_dir),
        "VEILFACE_SHARED_DIR": str(tmp_path / "shared"),
    }
    settings = load_settings(environ, bootstrap_api_key=ADMIN_KEY, recognizer="edgeface_xs_xxs")
    create_schema(make_engine(settings))
    client = create_app(settings).test_client()
    model = client.get("/readyz", headers={"X-API-Key": ADMIN_KEY}).get_json()["checks"]["model"]
    assert model == {
        "ok": False,
        "active": "edgeface_xs_xxs",
        "threshold": 0.3316,
        "missing": ["edgeface_xs.onnx", "edgeface_xxs.onnx"],
    }
