"""Where the database puts the n-th template of a gallery: block number and in-block slot."""

from __future__ import annotations

from veilface.crypto.params import DEFAULT_PARAMS, CkksParams


def place(sequence: int, dim: int, params: CkksParams = DEFAULT_PARAMS) -> tuple[int, int]:
    """``(block_no, slot)`` of the template numbered ``sequence`` (from the gallery's slot counter)."""
    params.check_dim(dim)
    return divmod(sequence, params.block_capacity)
