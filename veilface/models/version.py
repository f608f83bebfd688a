"""What a model version is: its network (how to feed it, what it returns) and its threshold.

One description serves every model, built-in or trained, in the manner of timm's pretrained
configs: a version names its network and the network carries its own preprocessing, so nothing
has to be looked up elsewhere to run it. The kinds of network are

- :class:`OnnxNetwork`: one ONNX recogniser;
- :class:`Ensemble`: several recognisers on the same crop, their embeddings joined;
- :class:`Projected`: another network's embeddings through a fitted compact-template projection.

``as_dict`` and ``from_dict`` give the JSON form that ``registry.json`` stores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

#: The crop the aligner makes (:func:`veilface.face.align.align_face`): every network takes it.
ALIGNED_SIZE = (112, 112)


@dataclass(frozen=True)
class Preprocessing:
    """How an aligned BGR uint8 crop becomes the network's input.

    Pixels are normalised as ``(x - mean) / std`` (the same for every channel) in
    ``colour_order``, on a crop of ``input_size`` (height, width).
    """

    mean: float
    std: float
    colour_order: Literal["RGB", "BGR"] = "RGB"
    input_size: tuple[int, int] = ALIGNED_SIZE

    def __post_init__(self) -> None:
        if self.colour_order not in ("RGB", "BGR"):
            raise ValueError(f"colour order must be RGB or BGR, not {self.colour_order!r}")
        object.__setattr__(self, "input_size", tuple(self.input_size))  # a JSON list once read back


@dataclass(frozen=True)
class OnnxNetwork:
    """One ONNX recogniser: its file, its preprocessing and the names of its input and output.

    ``dim`` is the length of its embedding. ``batch_fixed`` means the graph only accepts a batch of
    one. A relative ``file`` is relative to the folder the version comes from (:meth:`located`).
    """

    kind: ClassVar[str] = "onnx"

    file: str
    dim: int
    preprocessing: Preprocessing
    input_name: str = "input"
    output_name: str = "embedding"
    batch_fixed: bool = False

    @property
    def path(self) -> Path:
        return Path(self.file)

    def located(self, folder: Path) -> OnnxNetwork:
        """The same network with its file inside ``folder`` (an absolute file stays where it is)."""
        return replace(self, file=str(folder / self.file))

    def missing_files(self) -> list[Path]:
        """The files this network needs that do not exist."""
        return [] if self.path.is_file() else [self.path]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnnxNetwork:
        fields = {key: value for key, value in data.items() if key != "kind"}
        return cls(**{**fields, "preprocessing": Preprocessing(**fields["preprocessing"])})


@dataclass(frozen=True)
class EnsembleMember:
    """One recogniser of an ensemble: the model version it is, and its network."""

    version: str
    network: OnnxNetwork


@dataclass(frozen=True)
class Ensemble:
    """Several recognisers embed the same aligned crop; the template joins their embeddings in
    order (:func:`veilface.face.embed.join_embeddings`)."""

    kind: ClassVar[str] = "ensemble"

    members: tuple[EnsembleMember, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ValueError("an ensemble needs at least two members")
        object.__setattr__(self, "members", tuple(self.members))

    @property
    def dim(self) -> int:
        """Length of the joined embedding: the sum of the members'."""
        return sum(member.network.dim for member in self.members)

    @property
    def versions(self) -> tuple[str, ...]:
        """The members' model versions, in order."""
        return tuple(member.version for member in self.members)

    def located(self, folder: Path) -> Ensemble:
        return Ensemble(tuple(replace(m, network=m.network.located(folder)) for m in self.members))

    def missing_files(self) -> list[Path]:
        return [path for member in self.members for path in member.network.missing_files()]

    def as_dict(self) -> dict[str, Any]:
        members = [{"version": m.version, "network": m.network.as_dict()} for m in self.members]
        return {"kind": self.kind, "members": members}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ensemble:
        return cls(
            tuple(EnsembleMember(m["version"], OnnxNetwork.from_dict(m["network"])) for m in data["members"])
        )


@dataclass(frozen=True)
class Projected:
    """The embeddings of ``base`` through the fitted projection ``projection``, ``dim`` long.

    The recognisers are those of ``base``; the embedder applies the projection per gallery.
    """

    kind: ClassVar[str] = "projected"

    base: OnnxNetwork | Ensemble
    projection: str
    dim: int

    def located(self, folder: Path) -> Projected:
        return replace(self, base=self.base.located(folder))

    def missing_files(self) -> list[Path]:
        return self.base.missing_files()

    def as_dict(self) -> dict[str, Any]:
        base = self.base.as_dict()
        return {"kind": self.kind, "base": base, "projection": self.projection, "dim": self.dim}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Projected:
        return cls(network_from_dict(data["base"]), data["projection"], data["dim"])  # type: ignore[arg-type]


Network = OnnxNetwork | Ensemble | Projected
_KINDS: dict[str, type[OnnxNetwork] | type[Ensemble] | type[Projected]] = {
    kind.kind: kind for kind in (OnnxNetwork, Ensemble, Projected)
}


def network_from_dict(data: dict[str, Any]) -> Network:
    """The network whose :meth:`as_dict` is ``data``; ``ValueError`` for an unknown kind."""
    try:
        kind = _KINDS[data["kind"]]
    except KeyError:
        raise ValueError(f"unknown network kind {data.get('kind')!r}; known: {', '.join(_KINDS)}") from None
    return kind.from_dict(data)


@dataclass(frozen=True)
class ModelVersion:
    """One model version: what the embedder loads and what the gateway decides with.

    ``threshold`` is the cosine similarity at which two templates of this version are the same
    person. A trained version also records its validation ``metrics`` and the digest of the data
    it was trained on.
    """

    version: str
    threshold: float
    network: Network
    metrics: dict = field(default_factory=dict)
    data_digest: str | None = None

    @property
    def dim(self) -> int:
        """Length of the templates of this version."""
        return self.network.dim

    def located(self, folder: Path) -> ModelVersion:
        """The same version with its relative files inside ``folder``."""
        return replace(self, network=self.network.located(folder))

    def missing_files(self) -> list[Path]:
        """The files needed to run this version that do not exist (none: it can be loaded)."""
        return self.network.missing_files()

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``registry.json``, ``veilface models show``)."""
        return {
            "version": self.version,
            "threshold": self.threshold,
            "network": self.network.as_dict(),
            "metrics": self.metrics,
            "data_digest": self.data_digest,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(
            version=data["version"],
            threshold=data["threshold"],
            network=network_from_dict(data["network"]),
            metrics=data.get("metrics") or {},
            data_digest=data.get("data_digest"),
        )
