"""Compact templates: a linear projection of embeddings to fewer dimensions (e.g. 512 -> 128).

A projection is fitted once on training identities only (CFP 001-250 by default, never
evaluation faces), stored in the model registry folder, and chosen per gallery. A
gallery with a projection keeps ``dim_out``-D templates, which the encrypted engine
scores about four times faster at 128-D than at 512-D. Templates made through a
projection carry the model version ``<model>:<projection>``, so they are never compared
with templates of the plain model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veilface import errors

SEPARATOR = ":"
#: A projection is the file ``<name>.npz`` in the registry's projections folder, so its name is a
#: plain lower-case name (no path separator, no ``..``), never a path.
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: The same rule as a JSON Schema pattern, for the OpenAPI document.
NAME_PATTERN = f"^{_NAME.pattern}$"


def checked_name(name: str) -> str:
    """``name`` if it may name a projection; raises BadRequest otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise errors.BadRequest(
            "a projection name is 1-64 characters of a-z, 0-9, '_', '.' and '-', starting with a letter "
            "or digit, without '..'"
        )
    return name


def _file(folder: Path, name: str) -> Path:
    """The file of projection ``name``: always directly inside ``folder``."""
    return folder / f"{checked_name(name)}.npz"


@dataclass(frozen=True)
class Projection:
    """``x -> normalise((x - mean) @ matrix)`` for one base model version."""

    name: str
    base_version: str
    mean: np.ndarray
    matrix: np.ndarray
    threshold: float

    def __post_init__(self) -> None:
        checked_name(self.name)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def version(self) -> str:
        """The model version of templates made through this projection."""
        return f"{self.base_version}{SEPARATOR}{self.name}"

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """Project and L2-normalise one embedding or a batch of them."""
        projected = (np.atleast_2d(embeddings) - self.mean) @ self.matrix
        projected /= np.linalg.norm(projected, axis=1, keepdims=True)
        return projected.astype(np.float32).reshape((*np.shape(embeddings)[:-1], self.dim))

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = _file(folder, self.name)
        meta = json.dumps({"base_version": self.base_version, "threshold": self.threshold})
        np.savez(path, mean=self.mean, matrix=self.matrix, meta=np.array(meta))
        return path

    @classmethod
    def load(cls, folder: Path, name: str) -> Projection:
        """The projection saved as ``name`` in ``folder``; BadRequest for a name that is not one,
        NotFound for one never saved."""
        path = _file(folder, name)
        if not path.exists():
            raise errors.NotFound(f"projection {name!r} is not registered")
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return cls(name, meta["base_version"], data["mean"], data["matrix"], meta["threshold"])


def fit_pca(name: str, base_version: str, embeddings: np.ndarray, dim: int) -> Projection:
    """Principal components of ``embeddings`` (training identities only), threshold unset."""
    if dim & (dim - 1) or not 0 < dim < embeddings.shape[1]:
        raise errors.BadRequest("the projected dimension must be a power of two below the model's")
    mean = embeddings.mean(axis=0)
    _, _, components = np.linalg.svd(embeddings - mean, full_matrices=False)
    return Projection(name, base_version, mean.astype(np.float32), components[:dim].T.astype(np.float32), 0.0)


def split_version(version: str) -> tuple[str, str | None]:
    """``'edgeface_xs:pca128'`` -> ``('edgeface_xs', 'pca128')``; a plain version has no projection."""
    base, _, projection = version.partition(SEPARATOR)
    return base, projection or None
