"""Embedder worker: detect, align and embed faces, then encrypt with the public context.

Start with ``celery -A veilface.workers.embedder worker -Q embed --pool solo`` (``make run``
does). The plaintext embedding lives only in this process's memory for the length of one
task; what leaves it is a CKKS ciphertext. Importing this module reads no setting and opens
nothing: the worker's state (:func:`worker`) is built when Celery starts the worker, or on
the first task.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy.exc import IntegrityError

from veilface import errors
from veilface.config import Settings, load_settings
from veilface.crypto.params import CkksParams
from veilface.crypto.public import encrypt_probe, encrypt_template
from veilface.crypto.sealing import PayloadSealer
from veilface.face.pipeline import FacePipeline
from veilface.messaging.app import lazy_celery
from veilface.messaging.messages import (
    EMBED_QUEUE,
    TASK_ENROLL,
    TASK_PROBE,
    EnrollRequest,
    EnrollResult,
    FaceBox,
    Probe,
    ProbeRequest,
    b64decode,
    b64encode,
    error_payload,
)
from veilface.models.registry import ModelRegistry, ModelVersion
from veilface.search.layout import place
from veilface.search.sentinels import open_seeds, sealed_true_scores
from veilface.store import galleries as store
from veilface.store.db import session_scope
from veilface.store.models import Gallery, Template
from veilface.store.presence import EMBEDDER
from veilface.workers.runtime import (
    RETRY_TRANSIENT,
    Presence,
    SignedTask,
    WorkerRuntime,
    announce,
    load_runtime,
)

log = logging.getLogger("veilface.embedder")

app = lazy_celery()


class ActiveModel:
    """The registry's active model version and its pipeline, reloaded when it changes.

    ``veilface models activate`` rewrites the registry; the next task sees the new stamp
    and loads the new model, so a switch needs no restart of the stack. ``params`` are the
    key set's: a model whose templates they cannot serve is refused.
    """

    def __init__(self, settings: Settings, registry: ModelRegistry, params: CkksParams):
        self.settings = settings
        self.registry = registry
        self.params = params
        self.stamp = registry.stamp()
        self.model = registry.active()
        self.pipeline = FacePipeline.from_model(settings, self.model)

    def current(self) -> tuple[ModelVersion, FacePipeline]:
        stamp = self.registry.stamp()
        if stamp != self.stamp:
            model = self.registry.active()
            if model.version != self.model.version:
                log.info("switching model %s -> %s", self.model.version, model.version)
                self.pipeline = FacePipeline.from_model(self.settings, model)
            self.stamp, self.model = stamp, model
        return self.model, self.pipeline

    def announced_version(self) -> str:
        """The version the next task will use: the registry's active one (loaded on that task)."""
        try:
            return self.registry.active().version
        except Exception:  # an unreadable registry: report what is loaded
            return self.model.version

    def templated(self, embedding: np.ndarray, projection: str | None) -> tuple[str, np.ndarray]:
        """Template version and vector for a gallery: the model's own, or through its projection.

        Raises Unavailable if the key set cannot serve templates of that dimension.
        """
        if projection is None:
            version, vector = self.model.version, embedding
        else:
            fitted = self.registry.projection(projection)
            if fitted.base_version != self.model.version:
                base, current = fitted.base_version, self.model.version
                raise errors.Conflict(f"projection {projection!r} was fitted for {base}, not {current}")
            version, vector = fitted.version, fitted.apply(embedding)
        _check_servable(self.params, version, len(vector))
        return version, vector


@dataclass
class Embedder:
    """What an embedder process holds: its runtime, the queue key and the active model."""

    runtime: WorkerRuntime
    sealer: PayloadSealer
    active: ActiveModel

    @classmethod
    def load(cls, settings: Settings) -> Embedder:
        """Open the store and the keys (:func:`load_runtime`), then load the active model."""
        runtime = load_runtime(settings, EMBEDDER)
        sealer = PayloadSealer.from_file(settings.queue_key_path)
        return cls(runtime, sealer, ActiveModel(settings, ModelRegistry(settings), runtime.context.params))

    def presence(self) -> Presence:
        """This embedder's heartbeat: the shared queue, the next task's model, the ONNX provider."""
        provider = self.active.pipeline.providers["recognizer"]
        return Presence(self.runtime, EMBEDDER, EMBED_QUEUE, self.active.announced_version, provider)


@functools.cache
def worker() -> Embedder:
    """This process's embedder, built from the environment's settings on first use."""
    return Embedder.load(load_settings())


class EmbedderTask(SignedTask):
    """An embedder task: run only when signed, with this process's :func:`worker`."""

    def runtime(self) -> WorkerRuntime:
        return worker().runtime


announce(app, lambda: worker().presence())

#: Enroll is idempotent per image hash (a second run finds the first's template), so a lost
#: database connection is retried; probe touches no database, so it is never retried.
TASK_OPTIONS = {"base": EmbedderTask, "acks_late": True, "reject_on_worker_lost": True}


def _image(request: EnrollRequest | ProbeRequest) -> bytes:
    """The request's image, opened under the binding rebuilt from the request's own fields; one
    WARNING line if it is refused (sealed for another task, expired, or not the hashed image)."""
    try:
        return worker().sealer.open(b64decode(request.sealed_image), request.binding())
    except errors.MessageRefused as exc:
        log.warning("refused image of %s: %s", request.binding().task, exc.message)
        raise


def _check_model(model: ModelVersion, expected: str | None) -> None:
    """Refuse a task for another model version than this embedder's (its registry differs)."""
    if expected is not None and expected != model.version:
        log.error(
            "refusing task: this embedder makes %s embeddings, the gateway's active model is %s "
            "(check VEILFACE_MODEL_DIR)",
            model.version,
            expected,
        )
        raise errors.Unavailable(f"an embedder runs model {model.version}, not the active {expected}")


def _check_servable(params: CkksParams, version: str, dim: int) -> None:
    """Refuse templates that the key set's Galois keys cannot serve (``CkksParams.check_dim``)."""
    try:
        params.check_dim(dim)
    except ValueError as exc:
        message = (
            f"model {version} makes {dim}-D templates and the key set serves powers of two of at most "
            f"{params.max_dim}-D: rotate the keys (veilface keys rotate) or activate another model"
        )
        log.error("refusing task: %s", message)
        raise errors.Unavailable(message) from exc


@app.task(name=TASK_ENROLL, **TASK_OPTIONS, **RETRY_TRANSIENT)
def enroll(message: dict) -> dict:
    """Encrypt the face of one image into the gallery's delta; idempotent per image hash.

    ``message`` is an :class:`EnrollRequest`; the template is encrypted under the gallery's key set
    (``key_set``, the deployment's when ``None``). The subject is created in the same transaction
    as its first template, so a refused photo never leaves an empty subject behind.
    ``model_version`` is the gateway's active version: an embedder running another one
    refuses the task (503).
    """
    state = worker()
    model, pipeline = state.active.current()
    try:
        request = EnrollRequest.from_message(message)
        image = _image(request)
        _check_model(model, request.model_version)
        context = state.runtime.context_for(request.key_set)
        face = pipeline.select_for_enrollment(pipeline.analyze(image), main=request.main_face)
        version, vector = state.active.templated(face.embedding, request.projection)
    except errors.VeilfaceError as exc:
        return error_payload(exc)
    gallery_id, image_sha256 = request.gallery_id, request.image_sha256
    box = FaceBox(face.box, face.score)
    with session_scope(state.runtime.sessions) as session:
        gallery = session.get(Gallery, gallery_id)
        if gallery is None or gallery.key_fingerprint != request.key_set:
            # deleted, or re-keyed since the gateway sent this: a template under its old key set
            # would be unreadable (and would outlive that key's destruction)
            return error_payload(errors.Conflict("the gallery was deleted or re-keyed meanwhile"))
        subject_id = store.get_or_create_subject(session, gallery, request.subject).id
        existing = store.find_template(session, gallery_id, subject_id, version, image_sha256)
        if existing is not None:
            return EnrollResult(existing.id, version, box, created=False).to_message()
        block_no, slot = place(store.next_sequence(session, gallery_id, version), len(vector))
        template = Template(
            gallery_id=gallery_id,
            subject_id=subject_id,
            model_version=version,
            image_sha256=image_sha256,
            block_no=block_no,
            slot=slot,
            state="delta",
            ciphertext=encrypt_template(context, vector, slot),
        )
        session.add(template)
        try:
            session.flush()
        except IntegrityError:
            # A redelivered copy of this task enrolled the same image first.
            session.rollback()
            existing = store.find_template(session, gallery_id, subject_id, version, image_sha256)
            return EnrollResult(existing.id, version, box, created=False).to_message()
        return EnrollResult(template.id, version, box, created=True).to_message()


@app.task(name=TASK_PROBE, **TASK_OPTIONS)
def probe(message: dict) -> list[dict] | dict:
    """Every face of a query image, the main face first, each encrypted as a probe unless it failed
    quality.

    ``message`` is a :class:`ProbeRequest`. ``as_template`` encrypts in the template layout
    (slot 0) instead: the second photo of a 1:1 comparison. ``model_version`` is the
    gateway's active version, as for enroll; ``projection`` the gallery's compact-template
    projection, if any; ``key_set`` the searched gallery's key set, as for enroll.
    """
    state = worker()
    model, pipeline = state.active.current()
    try:
        request = ProbeRequest.from_message(message)
        image = _image(request)
        _check_model(model, request.model_version)
        context = state.runtime.context_for(request.key_set)
        faces = pipeline.analyze(image)
    except errors.VeilfaceError as exc:
        return error_payload(exc)
    as_template, projection = request.as_template, request.projection

    def encrypt(vector: np.ndarray) -> str:
        if as_template:
            return b64encode(encrypt_template(context, vector, 0))
        return b64encode(encrypt_probe(context, vector))

    try:
        templated = [state.active.templated(face.embedding, projection) for face in faces]
        seeds = open_seeds(state.sealer, request.binding(), request.sealed_sentinels)
    except errors.VeilfaceError as exc:
        return error_payload(exc)
    ciphertexts = [
        None if face.quality_reason else encrypt(vector)
        for face, (_, vector) in zip(faces, templated, strict=True)
    ]
    vectors = [vector for _, vector in templated]
    scores = sealed_true_scores(state.sealer, seeds, ciphertexts, vectors)
    return [
        Probe(
            face=FaceBox(face.box, face.score),
            model_version=version,
            ciphertext=ciphertext,
            quality_reason=face.quality_reason,
            sentinel_scores=sealed,
        ).to_message()
        for face, (version, _), ciphertext, sealed in zip(faces, templated, ciphertexts, scores, strict=True)
    ]
