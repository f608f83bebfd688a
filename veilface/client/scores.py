"""The client's side of a search: decrypt the score ciphertexts, rank the subjects, decide.

The server answers each probe with score ciphertexts (one per packed block or delta it
searched), each with the slots it carries and their subjects. The client decrypts them with its
secret key (:meth:`~veilface.crypto.secret.SecretContext.decrypt_scores`, which refuses anything
but a genuine score ciphertext of its key set), reads the listed slots and ranks each subject by
its best template (:func:`~veilface.search.ranking.top_k`, the gateway's own ranking); every other
slot is noise and never read. The match is the best candidate at or above the model's threshold.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from veilface.crypto.secret import SecretContext
from veilface.errors import VeilfaceError
from veilface.search.ranking import top_k
from veilface.search.results import ScoreResult


class BadAnswer(VeilfaceError):
    """The server's search answer is malformed or its ciphertexts are not genuine scores."""

    code, status = "bad_answer", 502


@dataclass(frozen=True)
class Candidate:
    """A subject and its best cosine similarity to the probe."""

    subject: str
    similarity: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _results(answer: dict[str, Any]) -> tuple[list[ScoreResult], dict[tuple[int, int], str]]:
    """The score results of one probe's answer, and ``(block, slot) -> subject`` of the listed slots."""
    results, owners = [], {}
    try:
        for score in answer["scores"]:
            block, listed = int(score["block"]), [(int(slot), str(name)) for slot, name in score["subjects"]]
            if score["source"] not in ("block", "delta"):
                raise BadAnswer(f"score source {score['source']!r} is neither block nor delta")
            blob = base64.b64decode(score["ciphertext"], validate=True)
            slots = tuple(slot for slot, _ in listed)
            results.append(ScoreResult(block, 0, score["source"], int(score["dim"]), slots, blob))
            owners.update(((block, slot), name) for slot, name in listed)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise BadAnswer(f"malformed search answer: {type(exc).__name__} {exc}") from None
    return results, owners


def rank(secret: SecretContext, answer: dict[str, Any], k: int) -> list[Candidate]:
    """The best ``k`` subjects of one probe's answer (``{"scores": [...]}``), best first."""
    results, owners = _results(answer)
    try:
        decrypted: list[tuple[ScoreResult, np.ndarray]] = [
            (result, secret.decrypt_scores(result.ciphertext, result.source)) for result in results
        ]
        ranked = top_k(decrypted, owners, k, secret.slots)
    except ValueError as exc:  # a slot outside the block
        raise BadAnswer(f"malformed search answer: {exc}") from None
    except VeilfaceError as exc:
        raise BadAnswer(f"refused a score ciphertext: {exc.message}") from None
    return [Candidate(str(subject), round(similarity, 6)) for subject, similarity in ranked]


def decide(candidates: list[Candidate], threshold: float) -> Candidate | None:
    """The match: the best candidate if its similarity reaches ``threshold``, else ``None``."""
    return candidates[0] if candidates and candidates[0].similarity >= threshold else None
