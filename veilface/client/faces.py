"""Local face analysis for a gallery: the embedder's models and preprocessing, on the client.

The server describes the gallery's model version (``model`` in its gallery answer, as
``veilface models show`` prints it); the client runs the same networks from its own copy of the
models folder (``VEILFACE_SHARED_DIR``/models) through the production face path
(:class:`~veilface.face.pipeline.FacePipeline`), so its templates compare with the embedder's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from veilface.config import Settings
from veilface.errors import MultipleFaces, NoFace, PoorQuality, VeilfaceError
from veilface.face.pipeline import Face, FacePipeline
from veilface.models.version import Ensemble, ModelVersion, OnnxNetwork, Projected


class UnsupportedModel(VeilfaceError):
    """The gallery's model cannot run on the client."""

    code, status = "unsupported_model", 400


def _local(network: OnnxNetwork | Ensemble, folder: Path) -> OnnxNetwork | Ensemble:
    """``network`` with every file taken from ``folder`` by its name (the server's paths are its own)."""
    if isinstance(network, Ensemble):
        return Ensemble(tuple(replace(m, network=_local(m.network, folder)) for m in network.members))
    return replace(network, file=str(folder / Path(network.file).name))


def local_model(description: dict[str, Any], models_dir: Path) -> ModelVersion:
    """The model version the server ``description`` names, with its files in ``models_dir``.

    Raises :class:`UnsupportedModel` for a compact-template projection (fitted on the server) or
    when a network file is missing here.
    """
    model = ModelVersion.from_dict(description)
    if isinstance(model.network, Projected):
        raise UnsupportedModel(
            f"model {model.version} projects templates with a projection fitted on the server; "
            "client-key galleries need a model the client can run"
        )
    model = replace(model, network=_local(model.network, models_dir))
    if missing := model.missing_files():
        raise UnsupportedModel(
            f"model {model.version} needs {missing[0].name}, not found in {models_dir} (VEILFACE_SHARED_DIR)"
        )
    return model


class LocalFaces:
    """Detect, align and embed faces locally with one gallery's model version."""

    def __init__(self, settings: Settings, description: dict[str, Any]):
        self.model = local_model(description, settings.shared_models_dir)
        self.pipeline = FacePipeline.from_model(settings, self.model)

    @property
    def version(self) -> str:
        """The model version: the server refuses templates and probes of another."""
        return self.model.version

    def faces(self, image: bytes, source: str) -> list[Face]:
        """Every face of ``image``, the main face first; :class:`NoFace` naming ``source`` if none."""
        faces = self.pipeline.analyze(image)
        if not faces:
            raise NoFace(f"no face found in {source}")
        return faces

    def enrollment_face(self, image: bytes, source: str, *, main: bool) -> Face:
        """The one face of ``image`` to enroll (the main one when ``main``), quality checked."""
        faces = self.faces(image, source)
        if len(faces) > 1 and not main:
            raise MultipleFaces(f"{source} holds {len(faces)} faces; pass --main-face to enroll the main one")
        try:
            return FacePipeline.select_for_enrollment(faces, main=True)
        except PoorQuality as exc:
            raise PoorQuality(f"{source}: {exc.message}") from None
