"""Margin heads: softmax over scaled cosine similarities to class centres, with a margin on the true class.

ArcFace adds an angular margin, ``cos(theta + m)`` (Deng et al., 2019); CosFace subtracts a cosine
margin, ``cos(theta) - m`` (Wang et al., 2018). Both keep only the backbone at inference: the head's
class centres are thrown away after training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module):
    """Class centres plus the margin softmax loss; ``forward(embeddings, labels)`` returns the mean loss.

    ``kind`` is ``"arcface"`` or ``"cosface"``, ``scale`` the ``s`` of both papers and ``margin`` their
    ``m``. Computed in float32 even under autocast.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, kind: str, scale: float, margin: float):
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"unknown margin head {kind!r}; known: arcface, cosface")
        self.kind, self.scale, self.margin = kind, scale, margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim).normal_(0.0, 0.01))

    @torch.no_grad()
    def init_centres(self, centres: torch.Tensor) -> None:
        """Set the class centres, e.g. to the mean embedding of each class."""
        self.weight.copy_(centres)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding to each class centre, ``(batch, classes)``."""
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosines = self.cosines(embeddings).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        target = cosines.gather(1, labels[:, None])
        if self.kind == "arcface":
            sine = torch.sqrt(1.0 - target * target)
            with_margin = target * math.cos(self.margin) - sine * math.sin(self.margin)
            # Past theta = pi - m, cos(theta + m) would increase again: fall back to a linear penalty.
            threshold = math.cos(math.pi - self.margin)
            fallback = target - math.sin(math.pi - self.margin) * self.margin
            with_margin = torch.where(target > threshold, with_margin, fallback)
        else:
            with_margin = target - self.margin
        logits = cosines.scatter(1, labels[:, None], with_margin) * self.scale
        return F.cross_entropy(logits, labels)
