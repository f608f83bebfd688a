"""The messages that cross the queues, defined once for the gateway and the workers.

Data flows one way: gateway -> ``embed`` queue -> embedder -> gateway -> ``match``
queues -> he-matcher -> gateway. Every payload is plain JSON: ciphertexts travel as
base64 text, never pickled objects, and no message carries a plaintext template. Every
task message is signed by the gateway (:mod:`veilface.messaging.signing`); the images of the embed
queue are sealed to the request that carries them (:class:`veilface.crypto.sealing.ImageBinding`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from veilface import errors
from veilface.crypto.sealing import ImageBinding
from veilface.search.results import ScoreResult

EMBED_QUEUE = "embed"
MATCH_QUEUE = "match"

TASK_ENROLL = "veilface.embed.enroll"
TASK_PROBE = "veilface.embed.probe"
TASK_SEARCH = "veilface.match.search"
TASK_PAIR = "veilface.match.pair"
TASK_COMPACT = "veilface.match.compact"


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise errors.InvalidCiphertext("payload is not valid base64") from exc


def error_payload(exc: errors.VeilfaceError) -> dict[str, Any]:
    """How a worker reports an expected failure (no face, bad image) as a task result."""
    return {"error": {"code": exc.code, "message": exc.message}}


def raise_for_error(result: Any) -> Any:
    """Re-raise a worker's :func:`error_payload` on the gateway side; pass anything else."""
    if isinstance(result, dict) and "error" in result:
        raise errors.from_code(result["error"]["code"], result["error"]["message"])
    return result


@dataclass(frozen=True)
class FaceBox:
    """Where a face is: ``box`` is (x, y, w, h) in image pixels, ``score`` the detector's."""

    box: tuple[float, float, float, float]
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4)}


@dataclass(frozen=True)
class EnrollResult:
    template_id: int
    model_version: str
    face: FaceBox
    created: bool

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> EnrollResult:
        return cls(
            template_id=msg["template_id"],
            model_version=msg["model_version"],
            face=FaceBox(tuple(msg["face"]["box"]), msg["face"]["score"]),
            created=msg["created"],
        )


@dataclass(frozen=True)
class Probe:
    """One face of a query image with its encrypted probe (``None`` if unusable)."""

    face: FaceBox
    model_version: str
    ciphertext: str | None
    quality_reason: str | None = None
    #: The true scores of the sentinels sent with the request, sealed to this probe
    #: (:func:`veilface.search.sentinels.seal_scores`); ``None`` when none were sent.
    sentinel_scores: str | None = None

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> Probe:
        return cls(
            face=FaceBox(tuple(msg["face"]["box"]), msg["face"]["score"]),
            model_version=msg["model_version"],
            ciphertext=msg["ciphertext"],
            quality_reason=msg.get("quality_reason"),
            sentinel_scores=msg.get("sentinel_scores"),
        )


def _request_from_message(cls: type, msg: Any) -> Any:
    """``cls`` built from a message's fields; anything malformed is a ``BadRequest``."""
    try:
        return cls(**msg)
    except TypeError:
        raise errors.BadRequest(f"malformed {cls.__name__} message") from None


@dataclass(frozen=True)
class EnrollRequest:
    """Enroll the face of one image for ``subject`` of gallery ``gallery_id``.

    ``sealed_image`` is the image sealed under :meth:`binding` (base64), ``image_sha256`` its
    hash (enrollment is idempotent per image), ``expires`` the Unix time it stops opening.
    """

    gallery_id: int
    subject: str
    image_sha256: str
    expires: int
    main_face: bool
    sealed_image: str = ""
    model_version: str | None = None
    projection: str | None = None
    #: Fingerprint of the gallery's own key set; ``None``: the deployment's.
    key_set: str | None = None

    def binding(self) -> ImageBinding:
        return ImageBinding(TASK_ENROLL, self.image_sha256, self.expires, self.gallery_id, self.subject)

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, msg: Any) -> EnrollRequest:
        return _request_from_message(cls, msg)


@dataclass(frozen=True)
class ProbeRequest:
    """Encrypt a probe for every face of one image (``as_template``: in the template layout).

    ``sealed_image``, ``image_sha256`` and ``expires`` as for :class:`EnrollRequest`;
    ``projection`` is the searched gallery's compact-template projection, if it has one;
    ``sealed_sentinels`` the seeds of the searched gallery's sentinels, sealed to :meth:`binding`
    (:func:`veilface.search.sentinels.seal_seeds`), whose true scores each probe carries back;
    ``key_set`` the fingerprint of the searched gallery's own key set (``None``: the deployment's).
    """

    image_sha256: str
    expires: int
    sealed_image: str = ""
    as_template: bool = False
    model_version: str | None = None
    projection: str | None = None
    sealed_sentinels: str = ""
    key_set: str | None = None

    def binding(self) -> ImageBinding:
        return ImageBinding(TASK_PROBE, self.image_sha256, self.expires)

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, msg: Any) -> ProbeRequest:
        return _request_from_message(cls, msg)


def probe_digest(probe: bytes) -> str:
    """The SHA-256 (hex) of a probe ciphertext: how a batched answer names the probe of each part."""
    return hashlib.sha256(probe).hexdigest()


def is_int(value: object) -> bool:
    """Whether a value parsed from JSON is an integer (``True`` and ``False`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SearchRequest:
    """Score every probe of ``probes`` (the faces of one image, base64 ciphertexts) on the
    packed blocks and deltas numbered ``blocks`` of one gallery: one message per matcher.
    ``key_set`` is the fingerprint of the gallery's own key set (``None``: the deployment's)."""

    gallery_id: int
    model_version: str
    probes: list[str]
    blocks: list[int] = field(default_factory=list)
    key_set: str | None = None

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, msg: Any, max_probes: int | None = None) -> SearchRequest:
        """Parse a search message; ``BadRequest`` unless every field has its type and there are
        between 1 and ``max_probes`` probes (``None``: no upper bound)."""
        request = _request_from_message(cls, msg)
        well_typed = (
            is_int(request.gallery_id)
            and isinstance(request.model_version, str)
            and isinstance(request.probes, list)
            and all(isinstance(p, str) for p in request.probes)
            and isinstance(request.blocks, list)
            and all(is_int(b) for b in request.blocks)
            and isinstance(request.key_set, str | None)
        )
        if not well_typed:
            raise errors.BadRequest("malformed SearchRequest message")
        if not request.probes:
            raise errors.BadRequest("a search message without a probe")
        if max_probes is not None and len(request.probes) > max_probes:
            raise errors.BadRequest(f"a search message of more than {max_probes} probes")
        return request


def score_to_message(result: ScoreResult) -> dict[str, Any]:
    """A matcher's score ciphertext as a queue message (the ciphertext as base64)."""
    return {**asdict(result), "slots": list(result.slots), "ciphertext": b64encode(result.ciphertext)}


def score_from_message(msg: dict[str, Any]) -> ScoreResult:
    return ScoreResult(**{**msg, "slots": tuple(msg["slots"]), "ciphertext": b64decode(msg["ciphertext"])})


def _scores_from_message(msgs: Any) -> tuple[ScoreResult, ...]:
    """Score results parsed from a list of :func:`score_to_message`; ``BadRequest`` otherwise."""
    try:
        scores = tuple(score_from_message(m) for m in msgs)
    except (KeyError, TypeError, AttributeError, errors.InvalidCiphertext) as exc:
        raise errors.BadRequest(f"malformed score answer: {type(exc).__name__}") from None
    if not all(isinstance(s.ciphertext, bytes) for s in scores):
        raise errors.BadRequest("malformed score answer")
    return scores


def _worker_from_message(msg: Any) -> str:
    worker = msg.get("worker") if isinstance(msg, dict) else None
    if not isinstance(worker, str):
        raise errors.BadRequest("malformed score answer: no worker name")
    return worker


@dataclass(frozen=True)
class ScoreAnswer:
    """A matcher's answer to a pair: its score ciphertexts, signed with its name.

    ``worker`` is the matcher's Celery node name, so that the gateway can name a matcher
    whose answer fails its checks; the gateway trusts nothing else the answer says.
    """

    worker: str
    scores: tuple[ScoreResult, ...]

    def to_message(self) -> dict[str, Any]:
        return {"worker": self.worker, "scores": [score_to_message(s) for s in self.scores]}

    @classmethod
    def from_message(cls, msg: Any) -> ScoreAnswer:
        """Parse an answer; :class:`errors.BadRequest` if it is not one."""
        worker = _worker_from_message(msg)
        return cls(worker, _scores_from_message(msg.get("scores")))


@dataclass(frozen=True)
class ProbeScores:
    """The part of a batched answer for one probe: the probe's digest and its score ciphertexts."""

    probe_sha256: str
    scores: tuple[ScoreResult, ...]


@dataclass(frozen=True)
class SearchAnswer:
    """A matcher's answer to a :class:`SearchRequest`: one part per probe, in the request's order,
    signed with the matcher's name (as :class:`ScoreAnswer`)."""

    worker: str
    probes: tuple[ProbeScores, ...]

    @classmethod
    def of(
        cls, worker: str, probes: Sequence[bytes], scores: Sequence[Sequence[ScoreResult]]
    ) -> SearchAnswer:
        """The answer of ``worker``: ``scores[n]`` are the scores of ``probes[n]``."""
        parts = (ProbeScores(probe_digest(p), tuple(s)) for p, s in zip(probes, scores, strict=True))
        return cls(worker, tuple(parts))

    def to_message(self) -> dict[str, Any]:
        parts = [
            {"probe_sha256": p.probe_sha256, "scores": [score_to_message(s) for s in p.scores]}
            for p in self.probes
        ]
        return {"worker": self.worker, "probes": parts}

    @classmethod
    def from_message(cls, msg: Any) -> SearchAnswer:
        """Parse an answer; :class:`errors.BadRequest` if it is not one."""
        worker = _worker_from_message(msg)
        parts = msg.get("probes")
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise errors.BadRequest("malformed search answer")
        probes = []
        for part in parts:
            digest = part.get("probe_sha256")
            if not isinstance(digest, str):
                raise errors.BadRequest("malformed search answer: a part names no probe")
            probes.append(ProbeScores(digest, _scores_from_message(part.get("scores"))))
        return cls(worker, tuple(probes))
