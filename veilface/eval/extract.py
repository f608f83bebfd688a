"""Embeddings of evaluation images through the production face path, computed in worker processes.

Each worker holds one :class:`~veilface.face.pipeline.FacePipeline` built with
:meth:`~veilface.face.pipeline.FacePipeline.from_model` for the first network, plus one extra
:class:`~veilface.face.embed.Recognizer` per other network (model and flip option; members that differ
only by a projection share one, and an ensemble version such as ``edgeface_xs_xxs`` runs its members'
networks and joins them as the embedder does): an image is decoded, detected and aligned once, and
every network embeds the same aligned face. The face kept is the main face, the one the gateway
compares 1:1 and enrolls with ``?face=main`` (:func:`~veilface.face.detect.by_prominence`).
Embeddings stay in memory: they are returned to the parent process through a pipe and never written
anywhere (plaintext embeddings are biometric data).

A member version ``<model>:<projection>`` (compact templates) embeds with ``<model>`` and applies the
registry's fitted projection, as the embedder does for a gallery with a projection.

Two test-time options may differ from production: ``detector_size`` (SCRFD input side, production
640) and ``pad`` (black border added on every side before detection, as a fraction of the longer side;
production 0). Both exist to measure whether production should change.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.pool import Pool
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from veilface.config import Settings
from veilface.errors import VeilfaceError
from veilface.eval.occlusion import Occluder
from veilface.eval.variants import Member, Variant
from veilface.face.align import align_face
from veilface.face.detect import FaceDetector
from veilface.face.embed import Recognizer, join_embeddings
from veilface.face.image import decode_image
from veilface.face.pipeline import FacePipeline
from veilface.models.projection import split_version
from veilface.models.registry import ModelRegistry
from veilface.models.version import Ensemble


@dataclass(frozen=True, eq=False)
class OcclusionSpec:
    """Occlude the image before it enters the pipeline: ``Occluder(seed, kinds)(img, landmarks, key=key)``.

    The occluded image is encoded as PNG (lossless, so the occluder is the only change) and goes
    through the same path as an upload.
    """

    seed: int
    kinds: tuple[str, ...]
    key: str
    landmarks: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class ImageJob:
    """One image to analyse, optionally occluded first."""

    path: Path
    occlusion: OcclusionSpec | None = None


@dataclass(frozen=True, eq=False)
class ImageResult:
    """What the pipeline found in one image.

    ``faces`` counts the detected faces (0: failure to detect, or ``error`` when the image could not be
    decoded); the other fields describe the main one. ``occlusion`` names the occluder drawn, if any.
    """

    faces: int
    landmarks: np.ndarray | None = None
    quality_reason: str | None = None
    embeddings: dict[Member, np.ndarray] = field(default_factory=dict, repr=False)
    occlusion: str | None = None
    error: str | None = None

    @property
    def found(self) -> bool:
        return self.faces > 0

    def embedding(self, variant: Variant) -> np.ndarray | None:
        """The variant's unit embedding of the main face, or ``None`` without a face."""
        return variant.compose(self.embeddings) if self.found else None


class FaceExtractor:
    """A pool of worker processes (one ONNX Runtime thread each) embedding images for ``members``.

    Use as a context manager; :meth:`run` may be called many times on the same workers.
    """

    def __init__(
        self,
        settings: Settings,
        members: Sequence[Member],
        *,
        processes: int = 2,
        detector_size: int | None = None,
        pad: float = 0.0,
    ):
        if not members:
            raise ValueError("at least one member is needed")
        self.members = tuple(members)
        self._processes = processes
        self._init_args = (replace(settings, onnx_threads=1), self.members, detector_size, pad)
        self._pool: Pool | None = None

    def __enter__(self) -> FaceExtractor:
        self._pool = mp.get_context("spawn").Pool(
            self._processes, initializer=_init_worker, initargs=self._init_args
        )
        return self

    def __exit__(self, *exc_info) -> None:
        assert self._pool is not None
        self._pool.terminate()
        self._pool.join()
        self._pool = None

    def run(self, jobs: Sequence[ImageJob], desc: str = "images") -> list[ImageResult]:
        """Analyse every job (in order of ``jobs``)."""
        if self._pool is None:
            raise RuntimeError("use FaceExtractor as a context manager")
        results = self._pool.imap(_process, jobs, chunksize=4)
        return list(tqdm(results, total=len(jobs), desc=desc, mininterval=60))


class _Worker:
    """The models of one worker process."""

    def __init__(
        self,
        settings: Settings,
        members: tuple[Member, ...],
        detector_size: int | None,
        pad: float,
    ):
        cv2.setNumThreads(1)
        registry = ModelRegistry(settings)
        # One network run per (model, flip): members that differ only by a projection, and ensembles
        # sharing a recogniser with another member, share its run.
        self.networks_of = {member: _networks(registry, member) for member in members}
        first, *others = dict.fromkeys(n for networks in self.networks_of.values() for n in networks)
        self.pipeline = FacePipeline.from_model(
            replace(settings, flip_fusion=first.flip), registry.get(first.version)
        )
        if detector_size is not None:
            detector = FaceDetector(
                settings.shared_models_dir / f"{settings.detector}.onnx", threads=1, input_size=detector_size
            )
            self.pipeline = FacePipeline(
                detector, self.pipeline.recognizer, max_image_pixels=settings.max_image_pixels
            )
        self.first = first
        self.others = {}
        for network in others:
            self.others[network] = Recognizer.from_version(
                registry.get(network.version), threads=1, flip_fusion=network.flip
            )
        self.members = members
        self.projections = {
            member: registry.projection(name)
            for member in members
            if (name := split_version(member.version)[1]) is not None
        }
        self.pad = pad

    def process(self, job: ImageJob) -> ImageResult:
        data = job.path.read_bytes()
        kind = None
        try:
            if job.occlusion is not None:
                spec = job.occlusion
                img = decode_image(data, max_pixels=self.pipeline.max_image_pixels)
                occluded = Occluder(spec.seed, spec.kinds)(img, spec.landmarks, key=spec.key)
                data, kind = cv2.imencode(".png", occluded.image)[1].tobytes(), occluded.kind
            # FacePipeline.analyze(data) is decode_image + analyze_image; the image is kept for the others.
            img = decode_image(data, max_pixels=self.pipeline.max_image_pixels)
        except VeilfaceError as exc:
            return ImageResult(faces=0, occlusion=kind, error=exc.message)
        pad = round(self.pad * max(img.shape[:2]))
        if pad:
            img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        faces = self.pipeline.analyze_image(img)
        if not faces:
            return ImageResult(faces=0, occlusion=kind)
        face = faces[0]
        networks = {self.first: face.embedding}
        if self.others:
            crop = align_face(img, face.landmarks)
            networks.update({network: rec.embed([crop])[0] for network, rec in self.others.items()})
        embeddings = {}
        for member in self.members:
            embedding = join_embeddings([networks[network] for network in self.networks_of[member]])
            projection = self.projections.get(member)
            embeddings[member] = embedding if projection is None else projection.apply(embedding)
        return ImageResult(
            faces=len(faces),
            landmarks=face.landmarks - pad,
            quality_reason=face.quality_reason,
            embeddings=embeddings,
            occlusion=kind,
        )


def _networks(registry: ModelRegistry, member: Member) -> tuple[Member, ...]:
    """The network runs a member needs, each a model version with the member's flip option.

    The projection of a compact version is left out (it applies to the joined embedding); an ensemble
    needs a run of each of its members.
    """
    model = registry.get(split_version(member.version)[0])
    versions = model.network.versions if isinstance(model.network, Ensemble) else (model.version,)
    return tuple(Member(version, member.flip) for version in versions)


_worker: _Worker | None = None


def _init_worker(*args) -> None:
    global _worker
    _worker = _Worker(*args)


def _process(job: ImageJob) -> ImageResult:
    assert _worker is not None
    return _worker.process(job)
