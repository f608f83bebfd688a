"""Verification protocols: lists of image pairs read from the usual pair files.

Three formats are understood (:func:`read_pair_file` tells them apart):

* the generic one of ``veilface eval pairs``: lines ``path1 path2 label`` (label 1 same, 0 different),
  optionally led by a fold number (``fold path1 path2 label``); ``#`` starts a comment;
* LFW's ``pairs.txt``: a ``folds pairs_per_class`` header (``10 300``, the official View 2 file), then
  per fold ``pairs_per_class`` matched lines ``name i j`` and as many mismatched lines
  ``name1 i name2 j``; or a single pair count (see :func:`read_lfw_pairs`);
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

    def missing_images(self) -> list[str]:
        """The images the pairs name that are not files under ``root``."""
        return [path for path in self.images if not (self.root / path).is_file()]

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


def read_pair_file(path: str | Path, root: str | Path) -> PairList:
    """Read a pair file of any of the three formats: LFW's when its first line is one or two integers."""
    lines = _lines(path)
    if not lines:
        raise ValueError(f"{path}: no pairs")
    header = lines[0][1].split()
    if len(header) <= 2 and all(field.isdigit() for field in header):
        return read_lfw_pairs(path, root)
    return read_pairs(path, root)


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
    """Read LFW's ``pairs.txt``; images are ``<root>/<name>/<name>_<NNNN>.jpg``.

    Two headers are understood. The official View 2 one, ``folds per_class`` (``10 300``): each fold
    lists its matched then its mismatched pairs. And a single count ``n`` (the layout of
    ``pairsDevTrain.txt``, also used by some copies of View 2): all ``n`` matched pairs, then all ``n``
    mismatched ones; fold ``k`` is then the ``k``-th tenth of each block, which for View 2 (``3000``)
    gives back the official, identity-disjoint folds. Folds are numbered from 1.
    """
    lines = iter(_lines(path))
    _, header = next(lines)
    counts = [int(v) for v in header.split()]
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
    if len(counts) == 2:
        n_folds, per_class = counts
        folds = np.repeat(np.arange(1, n_folds + 1), 2 * per_class)
    elif len(counts) == 1 and counts[0] % 10 == 0:
        folds = np.tile(np.repeat(np.arange(1, 11), counts[0] // 10), 2)
    else:
        raise ValueError(f"{path}: header must be 'folds pairs_per_class' or a pair count divisible by 10")
    expected = np.array([True] * counts[-1] + [False] * counts[-1])
    if len(counts) == 2:
        expected = np.tile(expected, counts[0])
    if len(labels) != len(expected) or np.any(np.array(labels) != expected):
        raise ValueError(f"{path}: the pairs do not follow the layout its header {header!r} announces")
    return PairList(
        root=Path(root),
        first=tuple(first),
        second=tuple(second),
        labels=np.array(labels, dtype=bool),
        folds=folds,
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
