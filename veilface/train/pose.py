"""Pose-robust embeddings: a DREAM-style residual mapping on top of a frozen backbone.

DREAM (Cao et al., "Pose-Robust Face Recognition via Deep Residual Equivariant Mapping", CVPR 2018) adds
to the embedding ``f`` of a face a residual ``R(f)`` scaled by a yaw coefficient ``Y(yaw)``, trained so
that a profile face maps close to the frontal faces of its identity. The paper reads the yaw from a pose
estimator; here the ONNX graph only receives the crop, so the yaw coefficient is predicted from the
embedding itself by a logistic gate ``g(f)``, trained against the yaw the five landmarks give
(:func:`~veilface.train.data.yaw_ratio`). The mapping is therefore part of the embedding function and is
exported inside the ONNX graph: the embedder passes nothing more than the crop.

    out = normalize(f + g(f) * R(f)),   f = normalize(backbone(crop))
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from veilface.train.config import PoseConfig

#: Scale of the softmax over frontal class centres the mapping is trained with.
_SCALE = 32.0


class DreamMapping(nn.Module):
    """``f -> normalize(f + g(f) * R(f))`` on unit embeddings; starts as the identity (``R = 0``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, 1)
        self.residual = nn.Sequential(nn.Linear(dim, hidden), nn.PReLU(hidden), nn.Linear(hidden, dim))
        nn.init.zeros_(self.residual[-1].weight)
        nn.init.zeros_(self.residual[-1].bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.map(embeddings)[0]

    def map(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mapped unit embeddings and the gate's logits."""
        logits = self.gate(embeddings)
        mapped = embeddings + torch.sigmoid(logits) * self.residual(embeddings)
        return F.normalize(mapped, dim=1), logits[:, 0]


def fit_dream(
    embeddings: np.ndarray, labels: np.ndarray, yaws: np.ndarray, config: PoseConfig, *, seed: int
) -> DreamMapping:
    """Train a :class:`DreamMapping` on frozen unit ``embeddings`` of the training faces.

    Each face is mapped into the space of frontal faces: the loss is a softmax over the centres of the
    frontal faces of every class (so a profile moves towards its own identity's frontal faces and away
    from the others'), plus the gate's logistic loss against the landmark pose (frontal 0, profile 1;
    faces in between do not train the gate). Full-batch AdamW for ``config.epochs`` steps.
    """
    torch.manual_seed(seed)
    x = torch.from_numpy(embeddings).float()
    y = torch.from_numpy(labels).long()
    frontal = np.abs(yaws) <= config.frontal_yaw
    profile = np.abs(yaws) >= config.profile_yaw
    centres = torch.zeros(int(labels.max()) + 1, x.shape[1])
    centres.index_add_(0, y[frontal], x[frontal])
    centres = F.normalize(centres, dim=1)
    has_centre = centres.norm(dim=1) > 0
    trained = torch.from_numpy(frontal | profile) & has_centre[y]
    pose = torch.from_numpy(profile).float()
    mapping = DreamMapping(x.shape[1], config.hidden)
    optimizer = torch.optim.AdamW(mapping.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for _ in range(config.epochs):
        mapped, logits = mapping.map(x[trained])
        loss = F.cross_entropy(_SCALE * mapped @ centres.T, y[trained])
        loss = loss + F.binary_cross_entropy_with_logits(logits, pose[trained])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return mapping.eval()
