"""The production face path: image bytes in, one L2-normalised embedding per detected face out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from veilface.config import Settings
from veilface.errors import MultipleFaces, NoFace, PoorQuality
from veilface.face.align import align_face
from veilface.face.detect import FaceDetector
from veilface.face.embed import EnsembleRecognizer, Recognizer
from veilface.face.image import decode_image
from veilface.face.quality import assess
from veilface.models.registry import ModelRegistry
from veilface.models.version import Ensemble, ModelVersion, Projected


@dataclass(frozen=True, eq=False)
class Face:
    """One analysed face. ``box`` is ``(x, y, w, h)`` in image pixels, ``landmarks`` a ``(5, 2)`` array.

    ``embedding`` is a float32 unit vector; it is left out of ``repr`` so that it never reaches a log.
    ``quality_reason`` says why the face should not be enrolled, or is ``None``.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    embedding: np.ndarray = field(repr=False)
    quality_reason: str | None

    @property
    def area(self) -> float:
        """Area of the box in pixels."""
        return self.box[2] * self.box[3]


class FacePipeline:
    """Decode, detect, check quality, align and embed; holds one detector and one recogniser (or ensemble)."""

    def __init__(
        self,
        detector: FaceDetector,
        recognizer: Recognizer | EnsembleRecognizer,
        *,
        max_image_pixels: int,
    ):
        self.detector = detector
        self.recognizer = recognizer
        self.max_image_pixels = max_image_pixels

    @classmethod
    def from_settings(cls, settings: Settings, *, providers: Sequence[str] | None = None) -> FacePipeline:
        """Build the pipeline of the model version ``settings.recognizer`` names."""
        return cls.from_model(settings, ModelRegistry(settings).get(settings.recognizer), providers=providers)

    @classmethod
    def from_model(
        cls, settings: Settings, model: ModelVersion, *, providers: Sequence[str] | None = None
    ) -> FacePipeline:
        """Build the pipeline for a model version (its networks' files and preprocessing).

        An ensemble version gets one recogniser per member, joined by
        :class:`~veilface.face.embed.EnsembleRecognizer`; a projected version gets the recognisers of
        its base (the embedder applies the projection).
        """
        detector = FaceDetector(
            settings.shared_models_dir / f"{settings.detector}.onnx",
            threads=settings.onnx_threads,
            providers=providers,
        )
        load = partial(
            Recognizer,
            threads=settings.onnx_threads,
            flip_fusion=settings.flip_fusion,
            providers=providers,
        )
        network = model.network.base if isinstance(model.network, Projected) else model.network
        if isinstance(network, Ensemble):
            members = [load(member.version, member.network) for member in network.members]
            embedder: Recognizer | EnsembleRecognizer = EnsembleRecognizer(model.version, members)
        else:
            embedder = load(model.version, network)
        return cls(detector, embedder, max_image_pixels=settings.max_image_pixels)

    @property
    def model_name(self) -> str:
        """Name of the recogniser, e.g. ``edgeface_xs``: embeddings of different models never compare."""
        return self.recognizer.name

    @property
    def dim(self) -> int:
        """Length of the embeddings."""
        return self.recognizer.dim

    @property
    def providers(self) -> dict[str, str]:
        """ONNX Runtime execution provider of each model, e.g. ``{"detector": "CPUExecutionProvider"}``."""
        return {"detector": self.detector.provider, "recognizer": self.recognizer.provider}

    def analyze(self, data: bytes) -> list[Face]:
        """Analyse every face of an uploaded image, the main face first (the one enrolled with
        ``?face=main`` and compared 1:1; see :func:`~veilface.face.detect.by_prominence`).

        Raises :class:`~veilface.errors.InvalidImage` or :class:`~veilface.errors.ImageTooLarge` for an
        unusable upload; an image without faces gives an empty list.
        """
        return self.analyze_image(decode_image(data, max_pixels=self.max_image_pixels))

    def analyze_image(self, img: np.ndarray) -> list[Face]:
        """Same as :meth:`analyze` for an already decoded BGR uint8 image."""
        detections = self.detector.detect(img)
        embeddings = self.recognizer.embed([align_face(img, d.landmarks) for d in detections])
        return [
            Face(
                box=d.box,
                score=d.score,
                landmarks=d.landmarks,
                embedding=embedding,
                quality_reason=assess(img, d),
            )
            for d, embedding in zip(detections, embeddings, strict=True)
        ]

    @staticmethod
    def select_for_enrollment(faces: Sequence[Face], main: bool) -> Face:
        """Pick the face to enroll from the result of :meth:`analyze`: the only one, or the main face
        (the first) when ``main`` is true.

        Raises :class:`~veilface.errors.NoFace` when there is none, :class:`~veilface.errors.MultipleFaces`
        when there are several and ``main`` is false, :class:`~veilface.errors.PoorQuality` when the
        chosen face failed the quality gate.
        """
        if not faces:
            raise NoFace()
        if len(faces) > 1 and not main:
            raise MultipleFaces(
                f"the image holds {len(faces)} faces; pass ?face=main to enroll the main one "
                "(the largest near the centre)"
            )
        face = faces[0]
        if face.quality_reason:
            raise PoorQuality(face.quality_reason)
        return face
