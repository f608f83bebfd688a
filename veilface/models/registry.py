"""The versioned model registry the embedder loads from and the gateway reads thresholds from.

A model version names an ONNX recogniser, its input spec, its embedding dimension and
the decision threshold calibrated for it; an ensemble version names the versions whose
embeddings it joins instead. The built-in versions are the pretrained
recognisers under ``{shared_dir}/models``; trained models are registered into
``{model_dir}/registry.json`` by the trainer, which also says which version is active.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from veilface import errors
from veilface.config import Settings
from veilface.models.projection import Projection, split_version

#: Cosine-similarity thresholds at FMR 1e-4 with flip fusion (the default), calibrated by ``make eval``
#: on development impostor pairs (CFP identities 001-250, never the evaluation pairs) and rounded up:
#: see docs/accuracy.md.
BUILTIN_THRESHOLDS = {
    "edgeface_xs": 0.3356,
    "edgeface_xxs": 0.3590,
    "mobilefacenet": 0.6663,
    "edgeface_xs_xxs": 0.3316,
}
#: Built-in ensembles: both networks embed the same aligned face and the template joins their
#: embeddings (:func:`veilface.face.embed.join_embeddings`).
BUILTIN_ENSEMBLES = {"edgeface_xs_xxs": ("edgeface_xs", "edgeface_xxs")}
#: ``ModelVersion.spec`` of an ensemble, which has no network and no file of its own.
ENSEMBLE_SPEC = "ensemble"


@dataclass(frozen=True)
class ModelVersion:
    """One registered recogniser: what the embedder loads and what the gateway decides with.

    An ensemble has ``spec`` :data:`ENSEMBLE_SPEC`, no ``file``, and ``members``: the versions
    whose embeddings it joins, in order.
    """

    version: str
    spec: str
    file: str
    dim: int
    threshold: float
    metrics: dict = field(default_factory=dict)
    data_digest: str | None = None
    members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))  # a JSON list once read back

    @property
    def path(self) -> Path:
        return Path(self.file)


class ModelRegistry:
    """Built-in versions from the shared models folder plus those in ``registry.json``."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._file = settings.models_path / "registry.json"

    def _read(self) -> dict:
        try:
            return json.loads(self._file.read_text())
        except FileNotFoundError:
            return {"active": None, "versions": {}}

    def _write(self, data: dict) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._file.parent, suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, self._file)

    def _builtin(self, name: str) -> ModelVersion | None:
        from veilface.models.builtins import get_spec

        if name not in BUILTIN_THRESHOLDS:
            return None
        if name in BUILTIN_ENSEMBLES:
            members = BUILTIN_ENSEMBLES[name]
            return ModelVersion(
                version=name,
                spec=ENSEMBLE_SPEC,
                file="",
                dim=sum(get_spec(member).dim for member in members),
                threshold=BUILTIN_THRESHOLDS[name],
                members=members,
            )
        spec = get_spec(name)
        return ModelVersion(
            version=name,
            spec=name,
            file=str(self._settings.shared_models_dir / spec.file),
            dim=spec.dim,
            threshold=BUILTIN_THRESHOLDS[name],
        )

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
        fitted projection: same network, the projection's dimension and threshold.
        """
        base_name, projection_name = split_version(version)
        if projection_name is not None:
            base, projection = self.get(base_name), self.projection(projection_name)
            if projection.base_version != base.version:
                fitted = projection.base_version
                raise errors.NotFound(f"projection {projection_name!r} was fitted for {fitted}")
            return replace(base, version=version, dim=projection.dim, threshold=projection.threshold)
        entry = self._read()["versions"].get(version)
        if entry is not None:
            return ModelVersion(**entry)
        builtin = self._builtin(version)
        if builtin is None:
            raise errors.NotFound(f"model version {version!r} is not registered")
        return builtin

    def active(self) -> ModelVersion:
        """The version new templates and probes are made with."""
        return self.get(self._read()["active"] or self._settings.recognizer)

    def versions(self) -> list[ModelVersion]:
        registered = [ModelVersion(**e) for e in self._read()["versions"].values()]
        builtin = [self._builtin(name) for name in BUILTIN_THRESHOLDS]
        return registered + [b for b in builtin if b.version not in {r.version for r in registered}]

    def register(self, model: ModelVersion, *, activate: bool = False) -> None:
        """Add ``model`` (replacing a version of the same name) and optionally activate it."""
        data = self._read()
        data["versions"][model.version] = asdict(model)
        if activate:
            data["active"] = model.version
        self._write(data)

    def activate(self, version: str) -> ModelVersion:
        model = self.get(version)
        data = self._read()
        data["active"] = version
        self._write(data)
        return model
