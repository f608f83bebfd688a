"""Verification protocols: lists of image pairs read from the usual pair files.

Three formats are understood:

* the generic one of ``veilface eval pairs``: lines ``path1 path2 label`` (label 1 same, 0 different),
  optionally led by a fold number (``fold path1 path2 label``); ``#`` starts a comment;
* LFW's official View 2 ``pairs.txt``: a ``folds pairs_per_class`` header (``10 300``), then per fold
  ``pairs_per_class`` matched lines ``name i j`` and as many mismatched lines ``name1 i name2 j``;
* CFP's ``pairs_FP.txt`` / ``pairs_FF.txt``: lines ``split path1 path2 label``, i.e. the generic format
  with folds (the split is the fold).

Paths are kept as given, relative to the protocol's image folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PairList:
    """Pairs of images to compare: ``first[k]`` against ``second[k]``.

    ``labels`` is a bool array (True: same identity). ``folds`` gives each pair's fold (any integers) or
    is ``None`` when the file defines none, in which case :func:`veilface.eval.verification.make_folds`
    assigns them. ``root`` is the folder the paths are relative to.
    """

    root: Path
    first: tuple[str, ...]
    second: tuple[str, ...]
    labels: np.ndarray
    folds: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.first)
        if len(self.second) != n or self.labels.shape != (n,):
            raise ValueError("first, second and labels must have the same length")
        if self.folds is not None and self.folds.shape != (n,):
            raise ValueError("folds must have one entry per pair")

    def __len__(self) -> int:
        return len(self.first)

    @property
    def images(self) -> list[str]:
        """Every image the pairs use, each once, in order of first use."""
        return list(
            dict.fromkeys(path for pair in zip(self.first, self.second, strict=True) for path in pair)
        )

    def select(self, keep: np.ndarray) -> PairList:
        """The pairs where the bool mask ``keep`` is true."""
        idx = np.flatnonzero(keep)
        return PairList(
            root=self.root,
            first=tuple(self.first[i] for i in idx),
            second=tuple(self.second[i] for i in idx),
            labels=self.labels[idx],
            folds=None if self.folds is None else self.folds[idx],
        )


def read_pairs(path: str | Path, root: str | Path) -> PairList:
    """Read a generic (or CFP) pair file: ``[fold] path1 path2 label`` per line, ``#`` comments.

    Either every line has a fold or none does; labels must be 0 or 1.
    """
    first, second, labels, folds = [], [], [], []
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) not in (3, 4):
            raise ValueError(f"{path}:{number}: expected '[fold] path1 path2 label', got {line!r}")
        if len(fields) == 4:
            folds.append(int(fields.pop(0)))
        if fields[2] not in ("0", "1"):
            raise ValueError(f"{path}:{number}: label must be 0 or 1, got {fields[2]!r}")
        first.append(fields[0])
        second.append(fields[1])
        labels.append(fields[2] == "1")
    if folds and len(folds) != len(labels):
        raise ValueError(f"{path}: either every line or none must start with a fold number")
    return PairList(
        root=Path(root),
        first=tuple(first),
        second=tuple(second),
        labels=np.array(labels, dtype=bool),
        folds=np.array(folds, dtype=np.int64) if folds else None,
    )


def read_lfw_pairs(path: str | Path, root: str | Path) -> PairList:
    """Read LFW's official ``pairs.txt``; images are ``<root>/<name>/<name>_<NNNN>.jpg``.

    Folds are numbered from 1, as the file orders them.
    """
    lines = iter(_lines(path))
    _, header = next(lines)
    n_folds, per_class = (int(v) for v in header.split())
    first, second, labels = [], [], []
    for number, line in lines:
        fields = line.split()
        if len(fields) == 3:
            name, i, j = fields
            first.append(_lfw_image(name, i))
            second.append(_lfw_image(name, j))
            labels.append(True)
        elif len(fields) == 4:
            first.append(_lfw_image(fields[0], fields[1]))
            second.append(_lfw_image(fields[2], fields[3]))
            labels.append(False)
        else:
            raise ValueError(f"{path}:{number}: expected 'name i j' or 'name1 i name2 j', got {line!r}")
    if len(labels) != 2 * n_folds * per_class:
        raise ValueError(f"{path}: header promises {2 * n_folds * per_class} pairs, found {len(labels)}")
    return PairList(
        root=Path(root),
        first=tuple(first),
        second=tuple(second),
        labels=np.array(labels, dtype=bool),
        folds=np.repeat(np.arange(1, n_folds + 1), 2 * per_class),
    )


def read_cfp_pairs(path: str | Path, root: str | Path, splits: range | None = None) -> PairList:
    """Read CFP's ``pairs_FP.txt`` or ``pairs_FF.txt``, keeping only ``splits`` when given."""
    pairs = read_pairs(path, root)
    if pairs.folds is None:
        raise ValueError(f"{path}: CFP pair files start every line with its split")
    return pairs if splits is None else pairs.select(np.isin(pairs.folds, list(splits)))


def _lfw_image(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def _lines(path: str | Path) -> list[tuple[int, str]]:
    """Non-empty lines of ``path`` with comments removed, each with its 1-based line number."""
    out = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append((number, line))
    return out
