"""Pose-robust embeddings: a DREAM-style residual mapping on top of a frozen backbone.

DREAM (Cao et al., "Pose-Robust Face Recognition via Deep Residual Equivariant Mapping", CVPR 2018) adds
to the embedding ``f`` of a face a residual ``R(f)`` scaled by a yaw coefficient ``Y(yaw)``, trained so
that a profile face maps close to the frontal faces of its identity. The paper reads the yaw from a pose
estimator; here the ONNX graph only receives the crop, so the yaw coefficient is predicted from the
embedding itself by a logistic gate ``g(f)``, fitted to the yaw coefficient the five landmarks give
(:func:`~veilface.train.facedb.yaw_ratio`). The mapping is therefore part of the embedding function and is
exported inside the ONNX graph: the embedder passes nothing more than the crop.

    out = normalize(f + g(f) * R(f)),   f = normalize(backbone(crop))
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from veilface.train.config import PoseConfig

#: Full-batch steps of the gate's logistic regression, and its learning rate.
_GATE_STEPS, _GATE_LR = 300, 1e-2


class DreamMapping(nn.Module):
    """``f -> normalize(f + g(f) * R(f))`` on unit embeddings; starts as the identity (``R = 0``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, 1)
        self.residual = nn.Sequential(nn.Linear(dim, hidden), nn.PReLU(hidden), nn.Linear(hidden, dim))
        nn.init.zeros_(self.residual[-1].weight)
        nn.init.zeros_(self.residual[-1].bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.apply_gate(embeddings, torch.sigmoid(self.gate(embeddings)))

    def apply_gate(self, embeddings: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The mapping with a given yaw coefficient ``gate`` ``(batch, 1)`` instead of the predicted one."""
        return F.normalize(embeddings + gate * self.residual(embeddings), dim=1)


def yaw_coefficient(yaws: np.ndarray, config: PoseConfig) -> np.ndarray:
    """DREAM's ``Y(yaw)`` from landmark yaw ratios: 0 up to ``frontal_yaw``, 1 from ``profile_yaw``,
    linear in between."""
    span = config.profile_yaw - config.frontal_yaw
    return np.clip((np.abs(yaws) - config.frontal_yaw) / span, 0.0, 1.0).astype(np.float32)


def fit_dream(
    embeddings: np.ndarray, labels: np.ndarray, yaws: np.ndarray, config: PoseConfig, *, seed: int
) -> DreamMapping:
    """Train a :class:`DreamMapping` on frozen unit ``embeddings`` of the training faces.

    As in the paper, the residual is trained with the yaw coefficient of the landmarks, so that
    ``f + Y(yaw) R(f)`` comes close (in cosine) to the mean frontal embedding of the face's identity;
    the gate is then fitted by logistic regression to predict ``Y(yaw)`` from ``f``. Both use full-batch
    AdamW.
    """
    torch.manual_seed(seed)
    x = torch.from_numpy(embeddings).float()
    y = torch.from_numpy(labels).long()
    coefficient = torch.from_numpy(yaw_coefficient(yaws, config))[:, None]
    frontal = coefficient[:, 0] == 0
    centres = torch.zeros(int(labels.max()) + 1, x.shape[1]).index_add_(0, y[frontal], x[frontal])
    has_centre = centres.norm(dim=1) > 0
    centres = F.normalize(centres, dim=1)
    turned = (coefficient[:, 0] > 0) & has_centre[y]
    mapping = DreamMapping(x.shape[1], config.hidden)
    optimizer = torch.optim.AdamW(
        mapping.residual.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    for _ in range(config.epochs):
        mapped = mapping.apply_gate(x[turned], coefficient[turned])
        loss = (1.0 - (mapped * centres[y[turned]]).sum(dim=1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer = torch.optim.AdamW(mapping.gate.parameters(), lr=_GATE_LR, weight_decay=0.0)
    for _ in range(_GATE_STEPS):
        loss = F.binary_cross_entropy_with_logits(mapping.gate(x), coefficient)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return mapping.eval()
