"""What a matcher returns for one query: score ciphertexts and the slots each covers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ScoreResult:
    """One score ciphertext of a block (``source='block'``) or of its delta (``source='delta'``).

    ``slots`` lists the in-block slots whose scores it carries (live when the matcher loaded
    them); every other position decrypts to noise and must be ignored. ``block_version``
    is the packed block's version the scores were computed on (0: no packed block yet).
    """

    block_no: int
    block_version: int
    source: Literal["block", "delta"]
    dim: int
    slots: tuple[int, ...]
    ciphertext: bytes
