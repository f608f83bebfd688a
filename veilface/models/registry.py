"""The versioned model registry the embedder loads from and the gateway reads thresholds from.

The built-in versions (:mod:`veilface.models.builtins`) run the pretrained recognisers under
``{shared_dir}/models``; trained versions are registered into ``{model_dir}/registry.json`` by the
trainer, which also says which version is active. ``<version>:<projection>`` names the compact
templates of a version through a fitted projection (:mod:`veilface.models.projection`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from veilface import errors
from veilface.config import Settings
from veilface.models.builtins import BUILTINS, builtin
from veilface.models.projection import Projection, split_version
from veilface.models.version import Ensemble, EnsembleMember, ModelVersion, Network, Projected

#: Format of ``registry.json``: 2 stores each version's whole description (:meth:`ModelVersion.as_dict`).
#: A file without a format is of the first, which named a built-in spec instead; it is read as the
#: second (:func:`upgrade_format_1`) and written as the second at the next change.
FORMAT = 2


def upgrade_format_1(data: dict[str, Any], shared_models_dir: Path) -> dict[str, Any]:
    """``registry.json`` of the first format, in the current one.

    A version of the first format ran its ``file`` with the input spec of the built-in recogniser
    ``spec``, or was an ensemble (``spec`` ``"ensemble"``) of the registered or built-in versions
    ``members``.
    """
    old = data["versions"]

    def network(name: str) -> Network:
        entry = old.get(name)
        if entry is None:
            return builtin(name).located(shared_models_dir).network
        if entry["spec"] == "ensemble":
            return Ensemble(tuple(EnsembleMember(member, network(member)) for member in entry["members"]))
        return replace(builtin(entry["spec"]).network, file=entry["file"], dim=entry["dim"])

    versions = {
        name: ModelVersion(
            version=name,
            threshold=entry["threshold"],
            network=network(name),
            metrics=entry.get("metrics") or {},
            data_digest=entry.get("data_digest"),
        ).as_dict()
        for name, entry in old.items()
    }
    return {"format": FORMAT, "active": data.get("active"), "versions": versions}


class ModelRegistry:
    """Built-in versions from the shared models folder plus those in ``registry.json``."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._file = settings.models_path / "registry.json"

    def _read(self) -> dict[str, Any]:
        """The contents of ``registry.json`` in the current format."""
        try:
            data = json.loads(self._file.read_text())
        except FileNotFoundError:
            return {"format": FORMAT, "active": None, "versions": {}}
        if "format" not in data:
            return upgrade_format_1(data, self._settings.shared_models_dir)
        if data["format"] != FORMAT:
            raise ValueError(f"{self._file} is of format {data['format']}; this Veilface reads {FORMAT}")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._file.parent, suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, self._file)

    def _registered(self, entry: dict[str, Any]) -> ModelVersion:
        return ModelVersion.from_dict(entry).located(self._settings.models_path)

    def _builtin(self, name: str) -> ModelVersion:
        return BUILTINS[name].located(self._settings.shared_models_dir)

    def stamp(self) -> int:
        """Changes whenever ``registry.json`` is rewritten (0 while there is none)."""
        try:
            return self._file.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    @property
    def projections_path(self) -> Path:
        """Folder of the fitted compact-template projections (``<name>.npz``)."""
        return self._settings.models_path / "projections"

    def projection(self, name: str) -> Projection:
        return Projection.load(self.projections_path, name)

    def get(self, version: str) -> ModelVersion:
        """The model version called ``version``; raises NotFound for an unknown one.

        ``<model>:<projection>`` names the compact templates of ``<model>`` through a
        fitted projection: the same network :class:`~veilface.models.version.Projected`, with the
        projection's dimension and threshold.
        """
        base_name, projection_name = split_version(version)
        if projection_name is not None:
            base, projection = self.get(base_name), self.projection(projection_name)
            if projection.base_version != base.version:
                fitted = projection.base_version
                raise errors.NotFound(f"projection {projection_name!r} was fitted for {fitted}")
            network = Projected(base.network, projection.name, projection.dim)  # type: ignore[arg-type]
            return replace(base, version=version, threshold=projection.threshold, network=network)
        entry = self._read()["versions"].get(version)
        if entry is not None:
            return self._registered(entry)
        if version not in BUILTINS:
            raise errors.NotFound(f"model version {version!r} is not registered")
        return self._builtin(version)

    def active(self) -> ModelVersion:
        """The version new templates and probes are made with."""
        return self.get(self._read()["active"] or self._settings.recognizer)

    def versions(self) -> list[ModelVersion]:
        """Every version: the registered ones, then the built-ins no registered version replaces."""
        registered = [self._registered(entry) for entry in self._read()["versions"].values()]
        names = {model.version for model in registered}
        return registered + [self._builtin(name) for name in BUILTINS if name not in names]

    def register(self, model: ModelVersion, *, activate: bool = False) -> None:
        """Add ``model`` (replacing a version of the same name) and optionally activate it."""
        data = self._read()
        data["versions"][model.version] = model.as_dict()
        if activate:
            data["active"] = model.version
        self._write(data)

    def activate(self, version: str) -> ModelVersion:
        model = self.get(version)
        data = self._read()
        data["active"] = version
        self._write(data)
        return model
