"""Decision thresholds calibrated at a target false match rate on development impostor pairs.

Every cross-identity pair of the development images is an impostor pair (for CFP identities 001-250,
3,500 images: about 6.1 million pairs, so an FMR of 1e-4 rests on some 610 false matches); every
same-identity pair is a genuine one, used to report the FNMR the threshold gives. Images without a
face are left out (they yield no score).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from veilface.eval.verification import threshold_at_far


@dataclass(frozen=True)
class Calibration:
    """A threshold and what it gives on the development pairs it was chosen on."""

    threshold: float
    target_fmr: float
    fmr: float
    fnmr: float
    impostor_pairs: int
    genuine_pairs: int
    images: int
    images_without_face: int

    def as_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def calibrate(
    embeddings: Sequence[np.ndarray | None], identities: Sequence[int | str], target_fmr: float = 1e-4
) -> Calibration:
    """Lowest threshold whose FMR on the cross-identity pairs of ``embeddings`` is ``<= target_fmr``."""
    found = [k for k, e in enumerate(embeddings) if e is not None]
    matrix = np.stack([embeddings[k] for k in found]).astype(np.float32)
    ids = np.asarray(identities)[found]
    rows, cols = np.triu_indices(len(found), k=1)
    scores = (matrix @ matrix.T)[rows, cols]
    genuine = ids[rows] == ids[cols]
    threshold = threshold_at_far(scores[~genuine], target_fmr)
    return Calibration(
        threshold=threshold,
        target_fmr=target_fmr,
        fmr=float(np.mean(scores[~genuine] >= threshold)),
        fnmr=float(np.mean(scores[genuine] < threshold)),
        impostor_pairs=int((~genuine).sum()),
        genuine_pairs=int(genuine.sum()),
        images=len(embeddings),
        images_without_face=len(embeddings) - len(found),
    )
