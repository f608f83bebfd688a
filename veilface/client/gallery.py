"""One client-key gallery seen from the client: enroll, identify and verify with ciphertexts only.

Photos, templates and scores stay on the client: it analyses the faces locally, uploads
templates and probes encrypted under its own key, and decides from the score ciphertexts it
alone can decrypt.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from veilface.client.api import GalleryApi, ServerError
from veilface.client.ciphertexts import encrypted_probes, encrypted_templates
from veilface.client.faces import LocalFaces
from veilface.client.keys import ClientKeys, KeyDirError
from veilface.client.scores import BadAnswer, Candidate, decide, rank
from veilface.config import Settings
from veilface.errors import PoorQuality

#: Most positions one reservation may ask for (the contract's bound).
MAX_SLOTS_PER_RESERVATION = 64


@dataclass(frozen=True)
class Image:
    """An image to analyse and the name errors call it by (its path)."""

    data: bytes
    source: str


class PrivateGallery:
    """A gallery whose key set is the client's, on the server ``api`` talks to."""

    def __init__(self, api: GalleryApi, keys: ClientKeys, name: str, settings: Settings):
        self.api, self.keys, self.name, self.settings = api, keys, name, settings

    @classmethod
    def create(cls, api: GalleryApi, keys: ClientKeys, name: str, settings: Settings) -> dict[str, Any]:
        """Create the gallery on the server under the client's public key set; the server's answer."""
        return api.create_gallery(name, keys.public_blob())

    @cached_property
    def info(self) -> dict[str, Any]:
        """The server's description of the gallery, checked to be under this client's key set."""
        info = self.api.gallery(self.name)
        if info.get("keys") != "client":
            raise KeyDirError(f"gallery {self.name} is not a client-key gallery (keys: {info.get('keys')})")
        if info.get("key_fingerprint") != self.keys.fingerprint:
            raise KeyDirError(
                f"gallery {self.name} was created under key set {str(info.get('key_fingerprint'))[:12]}, "
                f"not the one in {self.keys.folder} ({self.keys.fingerprint[:12]})"
            )
        return info

    @cached_property
    def faces(self) -> LocalFaces:
        """The gallery's model, run locally."""
        return LocalFaces(self.settings, self.info["model"])

    def _same_model(self, answer: dict[str, Any]) -> None:
        if answer.get("model_version") != self.faces.version:
            raise ServerError(
                f"gallery {self.name} now uses model {answer.get('model_version')}, "
                f"not {self.faces.version}; run the command again",
                code="model_changed",
                status=409,
            )

    def enroll(self, subject: str, images: Sequence[Image], *, main_face: bool = False) -> dict[str, Any]:
        """Enroll one template per image for ``subject``; every image is analysed before any upload."""
        vectors = [self.faces.enrollment_face(i.data, i.source, main=main_face).embedding for i in images]
        stored: list[dict[str, Any]] = []
        for start in range(0, len(vectors), MAX_SLOTS_PER_RESERVATION):
            chunk = vectors[start : start + MAX_SLOTS_PER_RESERVATION]
            reserved = self.api.reserve_slots(self.name, len(chunk))
            self._same_model(reserved)
            templates = encrypted_templates(self.keys.public, chunk, reserved["slots"])
            stored.extend(self.api.add_templates(self.name, subject, templates)["templates"])
        return {"subject": subject, "templates": stored}

    def _search(self, probes: list[Any], subject: str | None) -> tuple[list[dict[str, Any]], float]:
        answer = self.api.search(self.name, encrypted_probes(self.keys.public, probes), subject)
        self._same_model(answer)
        try:
            threshold, per_probe = float(answer["threshold"]), answer["probes"]
        except (KeyError, TypeError, ValueError):
            raise BadAnswer("malformed search answer: no threshold or probes") from None
        if len(per_probe) != len(probes):
            raise BadAnswer(f"search answer for {len(per_probe)} probes, {len(probes)} sent")
        return per_probe, threshold

    def identify(self, image: Image, *, top_k: int = 5) -> dict[str, Any]:
        """Every face of ``image``, the main one first, with its candidates and match (or ``None``).

        A face that fails the quality gate is listed with its ``reason`` and not searched.
        """
        faces = self.faces.faces(image.data, image.source)
        usable = [face for face in faces if not face.quality_reason]
        per_probe, threshold = self._search([f.embedding for f in usable], None) if usable else ([], 0.0)
        found = iter([rank(self.keys.secret, answer, top_k) for answer in per_probe])
        listed = []
        for face in faces:
            candidates: list[Candidate] = [] if face.quality_reason else next(found)
            match = decide(candidates, threshold)
            entry: dict[str, Any] = {
                "box": [round(v, 1) for v in face.box],
                "match": match.as_dict() if match else None,
                "candidates": [c.as_dict() for c in candidates],
            }
            if face.quality_reason:
                entry["reason"] = face.quality_reason
            listed.append(entry)
        return {"faces": listed}

    def verify(self, subject: str, image: Image) -> dict[str, Any]:
        """Whether the main face of ``image`` is ``subject``.

        Returns ``{"subject", "match", "similarity", "threshold"}``; ``similarity`` is ``None`` when the
        answer carried no score of ``subject``.
        """
        face = self.faces.faces(image.data, image.source)[0]
        if face.quality_reason:
            raise PoorQuality(f"{image.source}: {face.quality_reason}")
        per_probe, threshold = self._search([face.embedding], subject)
        ranked = rank(self.keys.secret, per_probe[0], sys.maxsize)
        candidates = [c for c in ranked if c.subject == subject]
        similarity = candidates[0].similarity if candidates else None
        return {
            "subject": subject,
            "match": similarity is not None and similarity >= threshold,
            "similarity": similarity,
            "threshold": threshold,
        }
