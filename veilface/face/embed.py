"""Face recognisers on ONNX Runtime: aligned 112x112 crops in, L2-normalised embeddings out.

An ensemble runs several recognisers on the same crops and joins their embeddings
(:func:`join_embeddings`) into one template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from veilface.face.runtime import create_session
from veilface.models.version import ALIGNED_SIZE, OnnxNetwork

if TYPE_CHECKING:
    from veilface.models.version import ModelVersion

#: Largest batch sent to the network at once (twice as many crops with flip fusion); bounds memory.
_MAX_BATCH = 32


class Recognizer:
    """Embeds aligned faces with one ONNX ``network``, the model version ``name``.

    With ``flip_fusion`` the embedding is the sum of those of the face and of its mirror image, which
    is slightly more robust to pose. ``provider`` is the ONNX Runtime execution provider in use.
    """

    def __init__(
        self,
        name: str,
        network: OnnxNetwork,
        *,
        threads: int = 1,
        flip_fusion: bool = True,
        providers: Sequence[str] | None = None,
    ):
        size = network.preprocessing.input_size
        if size != ALIGNED_SIZE:
            raise ValueError(f"{name} takes {size} crops; faces are aligned to {ALIGNED_SIZE}")
        self.name = name
        self.network = network
        self.flip_fusion = flip_fusion
        self._session = create_session(network.path, threads=threads, providers=providers)
        self.provider: str = self._session.get_providers()[0]

    @classmethod
    def from_version(
        cls,
        version: ModelVersion,
        *,
        threads: int = 1,
        flip_fusion: bool = True,
        providers: Sequence[str] | None = None,
    ) -> Recognizer:
        """The recogniser of a model version of one ONNX network; ``TypeError`` for another kind."""
        if not isinstance(version.network, OnnxNetwork):
            raise TypeError(f"{version.version} is not one ONNX network but a {version.network.kind}")
        return cls(
            version.version,
            version.network,
            threads=threads,
            flip_fusion=flip_fusion,
            providers=providers,
        )

    @property
    def dim(self) -> int:
        """Length of one embedding."""
        return self.network.dim

    def embed(self, aligned: list[np.ndarray]) -> np.ndarray:
        """Embed BGR uint8 112x112 crops from :func:`~veilface.face.align.align_face`.

        Returns a float32 ``(len(aligned), dim)`` array whose rows have unit L2 norm.
        """
        if not aligned:
            return np.empty((0, self.dim), dtype=np.float32)
        batch = self._preprocess(np.stack(aligned))
        if self.flip_fusion:
            features = self._run(batch) + self._run(np.ascontiguousarray(batch[..., ::-1]))
        else:
            features = self._run(batch)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return (features / np.maximum(norms, 1e-12)).astype(np.float32)

    def _preprocess(self, crops: np.ndarray) -> np.ndarray:
        """uint8 NHWC BGR crops to the network's normalised float32 NCHW input."""
        preprocessing = self.network.preprocessing
        if preprocessing.colour_order == "RGB":
            crops = crops[..., ::-1]
        blob = (crops.astype(np.float32) - preprocessing.mean) / preprocessing.std
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Raw network output for an NCHW batch, split into chunks the graph accepts."""
        network = self.network
        step = 1 if network.batch_fixed else _MAX_BATCH
        outputs = [
            self._session.run([network.output_name], {network.input_name: batch[i : i + step]})[0]
            for i in range(0, len(batch), step)
        ]
        return np.concatenate(outputs).astype(np.float32)


def join_embeddings(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One unit embedding from the unit embeddings of several recognisers (rows of the last axis).

    They are concatenated and divided by the square root of their number: the cosine similarity of
    two joined embeddings is the mean of the recognisers' cosine similarities. A single part is
    returned as it is.
    """
    if len(parts) == 1:
        return parts[0]
    return (np.concatenate(parts, axis=-1) / np.sqrt(len(parts))).astype(np.float32)


class EnsembleRecognizer:
    """Several recognisers as one: each embeds the same aligned crops, :func:`join_embeddings` joins them."""

    def __init__(self, name: str, members: Sequence[Recognizer]):
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two recognisers")
        self.name = name
        self.members = tuple(members)
        self.provider: str = members[0].provider

    @property
    def dim(self) -> int:
        """Length of one joined embedding: the sum of the members' lengths."""
        return sum(member.dim for member in self.members)

    def embed(self, aligned: list[np.ndarray]) -> np.ndarray:
        """Like :meth:`Recognizer.embed`: a float32 ``(len(aligned), dim)`` array of unit rows."""
        return join_embeddings([member.embed(aligned) for member in self.members])
