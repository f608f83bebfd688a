"""How much of a search's scores an API key's scope may see.

Admin and eval keys see every candidate with its full-precision similarity. Read keys see
the decision and little else: at most ``read_top_k_max`` candidates, only those at or above
the threshold, similarities rounded to 2 decimals, and a threshold they may raise but never
lower. A read key holder who asks many questions then learns too little to rebuild a
template from the scores (docs/architecture.md, "A read-key holder who asks many questions").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import g

from veilface.api.gateway import Candidate
from veilface.api.params import current_gateway

#: How an API reports a cosine similarity (the CompreFace API maps it to [0, 1]).
Scale = Callable[[float], float]

#: Scopes that see full-precision scores, below the threshold too.
FULL_SCORE_SCOPES = frozenset({"admin", "eval"})
#: Decimals of a similarity shown to a read key.
READ_DECIMALS = 2


def cosine(similarity: float) -> float:
    """The cosine similarity as it is: Veilface's own scale."""
    return similarity


@dataclass(frozen=True)
class Disclosure:
    """What the scores of one request may reveal."""

    full: bool
    top_k_max: int

    @classmethod
    def for_request(cls) -> Disclosure:
        """The disclosure for the request's authenticated key."""
        settings = current_gateway().settings
        return cls(full=g.api_key_scope in FULL_SCORE_SCOPES, top_k_max=settings.read_top_k_max)

    def top_k(self, asked: int) -> int:
        """Candidates to search for: ``asked``, lowered to ``top_k_max`` for a read key."""
        return asked if self.full else min(asked, self.top_k_max)

    def threshold(self, asked: float | None, model_version: str | None = None) -> float | None:
        """The threshold to decide with: ``asked``, or ``None`` for the model's own.

        A read key may raise the threshold of ``model_version`` (default: the active model)
        but never lower it, so its answer is the model's threshold or a stricter one.
        """
        if self.full:
            return asked
        gateway = current_gateway()
        own = gateway.threshold(model_version or gateway.registry.active().version)
        return own if asked is None else max(asked, own)

    def shows(self, similarity: float, threshold: float | None) -> bool:
        """Whether a candidate with this cosine ``similarity`` is shown at all (``threshold`` is
        ``None`` only for a full-score key, which sees every candidate)."""
        return self.full or threshold is None or similarity >= threshold

    def shown(self, value: float) -> float:
        """A similarity (any scale) as shown: rounded to :data:`READ_DECIMALS` for a read key."""
        return value if self.full else round(value, READ_DECIMALS)

    def candidates(
        self, candidates: list[Candidate], threshold: float | None, scale: Scale = cosine
    ) -> list[Candidate]:
        """The candidates the key may see, each similarity converted by ``scale`` and shown."""
        return [
            Candidate(c.subject, self.shown(scale(c.similarity)))
            for c in candidates
            if self.shows(c.similarity, threshold)
        ]

    def verdict_similarity(
        self, similarity: float, threshold: float | None, scale: Scale = cosine
    ) -> float | None:
        """The similarity of a 1:1 verdict converted by ``scale``: ``None`` for a read key when it
        is below the threshold."""
        return self.shown(scale(similarity)) if self.shows(similarity, threshold) else None
