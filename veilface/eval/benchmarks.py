"""The standard benchmarks on the shared data: LFW, CFP (FF, FP), their occluded variants, LFW 1:N,
and the development set thresholds are calibrated on.

Only file lists and labels live here (no model code): ``data_dir`` is the shared ``data/`` folder
(``Settings.data_dir``) laid out as ``../shared/data/README.md`` describes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veilface.eval.occlusion import stable_seed
from veilface.eval.protocols import PairList, read_cfp_pairs, read_lfw_pairs

#: CFP splits whose identities (001-250) form the development set: the pretrained models never saw
#: them, but the trainer fine-tunes on them, so numbers of trained models on these splits mean nothing.
CFP_DEV_SPLITS = range(1, 6)
CFP_DEV_IDENTITIES = 250


def lfw(data_dir: Path) -> PairList:
    """LFW View 2: 6,000 pairs in 10 identity-disjoint folds."""
    return read_lfw_pairs(data_dir / "lfw" / "pairs.txt", data_dir / "lfw" / "images")


def cfp(data_dir: Path, protocol: str, splits: range | None = None) -> PairList:
    """CFP frontal-frontal (``"FF"``) or frontal-profile (``"FP"``) pairs, folds = splits 1-7."""
    return read_cfp_pairs(data_dir / "cfp" / f"pairs_{protocol}.txt", data_dir / "cfp" / "images", splits)


def cfp_images(data_dir: Path) -> list[str]:
    """Every CFP image (``<id>/frontal|profile/NN.jpg``, relative to ``cfp/images``), sorted."""
    root = data_dir / "cfp" / "images"
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*/*.jpg"))


def cfp_identity(path: str) -> int:
    """The identity number of a CFP image path."""
    return int(Path(path).parts[0])


@dataclass(frozen=True)
class OccludedPairs:
    """A pair list of which one image per pair is occluded: ``side[k]`` 0 for the first, 1 the second.

    ``name`` prefixes the occlusion key of each image (``f"{name}:{path}"``): an image occluded in
    several pairs carries the same occluder in all of them.
    """

    name: str
    pairs: PairList
    side: np.ndarray

    @property
    def occluded_images(self) -> list[str]:
        """The images that are occluded in some pair, each once."""
        chosen = (
            b if s else a for a, b, s in zip(self.pairs.first, self.pairs.second, self.side, strict=True)
        )
        return list(dict.fromkeys(chosen))

    def key(self, path: str) -> str:
        return f"{self.name}:{path}"


def occlude_one_side(name: str, pairs: PairList, seed: int) -> OccludedPairs:
    """Pick, with a generator fixed by ``(seed, name)``, which image of each pair is occluded."""
    side = np.random.default_rng(stable_seed(seed, f"{name}:sides")).integers(0, 2, size=len(pairs))
    return OccludedPairs(name=name, pairs=pairs, side=side)


@dataclass(frozen=True)
class OpenSetSplit:
    """LFW 1:N: the first image (sorted) of every identity with two or more images is enrolled, the
    others are mated searches; images of identities with one image, absent from the gallery, are the
    non-mated searches."""

    gallery: tuple[tuple[str, str], ...]
    mated: tuple[tuple[str, str], ...]
    non_mated: tuple[str, ...]


def lfw_open_set(images: list[str]) -> OpenSetSplit:
    """Split LFW ``images`` (``<name>/<name>_NNNN.jpg``) for the 1:N test."""
    by_identity: dict[str, list[str]] = defaultdict(list)
    for path in sorted(images):
        by_identity[Path(path).parts[0]].append(path)
    gallery, mated, non_mated = [], [], []
    for name, paths in sorted(by_identity.items()):
        if len(paths) == 1:
            non_mated.append(paths[0])
        else:
            gallery.append((name, paths[0]))
            mated.extend((name, path) for path in paths[1:])
    return OpenSetSplit(tuple(gallery), tuple(mated), tuple(non_mated))
