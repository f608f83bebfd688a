"""One TOML file per experiment, read into :class:`TrainConfig`.

Every key has a default; a config names only what the experiment changes. Unknown keys are errors, so
that a typo never silently trains something else. See ``services/trainer/configs/`` for examples and
``docs/training.md`` for the meaning of each key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class DataConfig:
    """Where the faces come from.

    ``layout`` is ``"folder"`` (one sub-folder per identity under ``{--data}/{root}``, aligned once with
    the production aligner and cached) or ``"lmdb"`` (``{--data}/{root}`` is a database made by
    ``python -m veilface.train.build_lmdb``). ``train`` and ``dev`` are identity ranges ``"FIRST-LAST"``
    (empty ``train``: every identity not in ``dev``); dev identities are never trained on: they give the
    validation curve and the calibrated threshold.
    """

    layout: Literal["folder", "lmdb"] = "folder"
    root: str = ""
    train: str = ""
    dev: str = ""
    workers: int = 2


@dataclass(frozen=True)
class ModelConfig:
    """Backbone name (see :func:`veilface.train.backbones.create_backbone`) and optional weights to start
    from: a path, relative names are looked up in the shared models folder. Parameters whose name starts
    with one of ``freeze`` (e.g. ``"stem"``, ``"stages.0"``) are not trained."""

    backbone: str = "ir50"
    weights: str = ""
    embedding_dim: int = 512
    freeze: tuple[str, ...] = ()


@dataclass(frozen=True)
class LossConfig:
    """Margin head: ``arcface`` (additive angular margin) or ``cosface`` (additive cosine margin).

    With ``init_from_embeddings`` each class centre starts at the mean embedding of its faces, so that
    fine-tuning a pretrained backbone does not begin with large gradients from a random head.
    """

    head: Literal["arcface", "cosface"] = "arcface"
    scale: float = 64.0
    margin: float = 0.5
    init_from_embeddings: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """``optimizer`` (``adamw``, or ``sgd`` with momentum 0.9 as arcface_torch trains IR-ResNets) with a
    linear warm-up then a cosine decay to zero, stepped every batch; ``head_lr`` for the margin head."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    head_lr: float = 1e-2
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    amp: bool = True


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation.

    ``occlusion`` is the probability that a crop gets a synthetic occluder from the same generator
    family as the evaluation's occluded sets, drawn from ``occlusion_kinds`` with the trainer's own
    ``occlusion_seed``.
    """

    flip: bool = True
    occlusion: float = 0.0
    occlusion_kinds: tuple[str, ...] = ()
    occlusion_seed: int = 20250101


@dataclass(frozen=True)
class PoseConfig:
    """Pose-robust training and mapping (see :mod:`veilface.train.pose`).

    ``anchor_weight`` (pose-aware fine-tuning): weight of a loss pulling every training face towards the
    mean frontal embedding of its identity under the starting weights, so that profiles learn to land
    where the pretrained model puts frontal faces (0: off). ``method`` is ``"none"`` or ``"dream"`` (a
    residual mapping fitted after training, kept only if it helps the dev identities). Faces whose
    :func:`~veilface.train.facedb.yaw_ratio` is at most ``frontal_yaw`` count as frontal, at least
    ``profile_yaw`` as profile.
    """

    anchor_weight: float = 0.0
    method: Literal["none", "dream"] = "none"
    hidden: int = 512
    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    frontal_yaw: float = 0.15
    profile_yaw: float = 0.35


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export, parity check and registration (``activate``: make it the active model at once).

    ``version`` defaults to ``{name}-{UTC time}``. ``target_fmr`` is the false match rate the registered
    threshold is calibrated for, on dev impostor pairs.
    """

    activate: bool = False
    version: str = ""
    parity_faces: int = 100
    parity_tolerance: float = 1e-4
    target_fmr: float = 1e-4


@dataclass(frozen=True)
class TrainConfig:
    """A whole experiment."""

    name: str
    seed: int = 0
    threads: int = 2
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as stored in checkpoints and results."""
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) in [{where}]: {', '.join(unknown)}; known: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        nested = _SECTIONS.get(name) if cls is TrainConfig else None
        if nested is not None:
            if not isinstance(value, dict):
                raise ValueError(f"[{name}] must be a table")
            kwargs[name] = _build(nested, value, name)
        else:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "augment": AugmentConfig,
    "pose": PoseConfig,
    "export": ExportConfig,
}


def load_config(path: Path) -> TrainConfig:
    """Read and check one experiment file."""
    with open(path, "rb") as fh:
        values = tomllib.load(fh)
    if "name" not in values:
        raise ValueError(f"{path}: the experiment needs a top-level name")
    return _build(TrainConfig, values, "top level")
