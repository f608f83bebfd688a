"""Face embedding backbones: aligned 112x112 RGB crops normalised to [-1, 1] in, embeddings out.

:func:`create_backbone` is the one way in, as ``timm.create_model`` is: a name, the embedding size and
optional weights. ``ir50`` (and ``ir18``, ``ir_tiny`` for tests) are the IR-ResNets of insightface's
``arcface_torch``; ``edgeface_xs`` and ``edgeface_xxs`` are EdgeFace (timm's EdgeNeXt with a 512-wide
classifier as embedding layer), whose shipped ``.pt`` state dicts load with their ``model.`` prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

#: Every backbone takes RGB crops normalised as ``(x - MEAN) / STD``.
MEAN, STD = 127.5, 127.5


class IBasicBlock(nn.Module):
    """Pre-activation residual block of the IR-ResNet: BN, conv, BN, PReLU, conv (strided), BN."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(inplanes, eps=1e-5),
            nn.Conv2d(inplanes, planes, 3, padding=1, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
            nn.PReLU(planes),
            nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class IResNet(nn.Module):
    """IR-ResNet for 112x112 faces: four stages of :class:`IBasicBlock` (each halving the resolution),
    then BN, dropout, a fully connected layer from the 7x7 map and a final BN (the embedding)."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        *,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        embedding_dim: int = 512,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0], eps=1e-5),
            nn.PReLU(widths[0]),
        )
        stages, inplanes = [], widths[0]
        for blocks, planes in zip(layers, widths, strict=True):
            stage = [IBasicBlock(inplanes, planes, stride=2)]
            stage += [IBasicBlock(planes, planes, stride=1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.neck = nn.Sequential(nn.BatchNorm2d(inplanes, eps=1e-5), nn.Dropout(dropout), nn.Flatten())
        self.fc = nn.Linear(inplanes * 7 * 7, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.neck(self.stages(self.stem(x)))))


def _edgeface(variant: str) -> Callable[[int], nn.Module]:
    def build(embedding_dim: int) -> nn.Module:
        import timm

        return timm.create_model(variant, pretrained=False, num_classes=embedding_dim)

    return build


_BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "ir_tiny": lambda dim: IResNet((1, 1, 1, 1), widths=(8, 16, 32, 64), embedding_dim=dim),
    "ir18": lambda dim: IResNet((2, 2, 2, 2), embedding_dim=dim),
    "ir50": lambda dim: IResNet((3, 4, 14, 3), embedding_dim=dim),
    "edgeface_xs": _edgeface("edgenext_x_small"),
    "edgeface_xxs": _edgeface("edgenext_xx_small"),
}


def list_backbones() -> list[str]:
    """Names :func:`create_backbone` accepts, sorted."""
    return sorted(_BACKBONES)


def create_backbone(name: str, *, embedding_dim: int = 512, weights: Path | None = None) -> nn.Module:
    """Build backbone ``name``; load ``weights`` (a state dict, keys may carry a ``model.`` prefix) when
    given. Raises ``KeyError`` for an unknown name and ``RuntimeError`` for weights that do not fit."""
    try:
        build = _BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None
    model = build(embedding_dim)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict({key.removeprefix("model."): value for key, value in state.items()})
    return model
