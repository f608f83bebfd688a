"""The PyTorch side of the data: crops from a :class:`~veilface.train.facedb.FaceDB` as normalised tensors,
with seeded augmentation (mirror, synthetic occluders)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from veilface.eval.occlusion import stable_seed
from veilface.face.align import ARCFACE_TEMPLATE, similarity_transform
from veilface.train.backbones import MEAN, STD
from veilface.train.config import AugmentConfig
from veilface.train.facedb import FaceDB
from veilface.train.occlusion import TrainOccluder


def to_tensor(crops: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """BGR uint8 crops ``(n, 112, 112, 3)`` to the backbones' RGB float input ``(n, 3, 112, 112)``."""
    batch = np.ascontiguousarray(np.asarray(crops)[..., ::-1].transpose(0, 3, 1, 2))
    return (torch.from_numpy(batch).float() - MEAN) / STD


def crop_landmarks(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Where the five landmarks of a photo land in its aligned crop (the aligner's similarity transform)."""
    points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    try:
        matrix = similarity_transform(points, ARCFACE_TEMPLATE * (size / 112.0))
    except ValueError:
        return ARCFACE_TEMPLATE * (size / 112.0)
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


class FaceDataset(Dataset):
    """Crops ``indices`` of ``db`` with class ``labels[k]``, augmented per ``augment`` (``None``: as stored).

    Augmentation is a function of ``(seed, epoch, index)`` only, so a run is reproducible whatever the
    number of loader workers; call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        db: FaceDB,
        indices: Sequence[int],
        labels: Sequence[int],
        augment: AugmentConfig | None = None,
        *,
        seed: int = 0,
    ):
        self.db = db
        self.indices = list(indices)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._occluder = None
        if augment is not None and augment.occlusion > 0:
            self._occluder = TrainOccluder(augment.occlusion_seed, augment.occlusion_kinds)
            self._landmarks = [crop_landmarks(db.records[i].landmarks) for i in self.indices]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.db.image(self.indices[k])
        if self.augment is not None:
            img = self._augmented(k, img)
        return to_tensor(img[None])[0], self.labels[k]

    def _augmented(self, k: int, img: np.ndarray) -> np.ndarray:
        assert self.augment is not None
        key = f"{self.epoch}:{self.indices[k]}"
        rng = np.random.default_rng(stable_seed(self.seed, key))
        if self._occluder is not None and rng.random() < self.augment.occlusion:
            img = self._occluder(img, self._landmarks[k], key=key)
        if self.augment.flip and rng.random() < 0.5:
            img = img[:, ::-1]
        return img
