"""Where the database puts the n-th template of a gallery, and how its block is laid out."""

from __future__ import annotations

from veilface.crypto.params import DEFAULT_PARAMS, CkksParams

#: Cost of one giant step of a block (rescale, relinearisation and rotation of a partial sum
#: at the score level), in units of one baby step (a rotation of the probe at the packed
#: level): 2.2 ms / 1.44 ms, from the block time at g = 32 against g = d on the 2-core VM.
GIANT_STEP_COST = 1.5


def place(sequence: int, dim: int, params: CkksParams = DEFAULT_PARAMS) -> tuple[int, int]:
    """``(block_no, slot)`` of the template numbered ``sequence`` (from the gallery's slot counter)."""
    params.check_dim(dim)
    return divmod(sequence, params.block_capacity)


def query_cost(dim: int, baby_steps: int, blocks: int) -> float:
    """Per-query rotation cost, in baby steps, of ``blocks`` blocks laid out with ``baby_steps``:
    ``(g - 1) + blocks * (d/g - 1) * GIANT_STEP_COST`` (the ``d`` products per block are
    the same for every ``g`` and left out)."""
    return (baby_steps - 1) + blocks * (dim // baby_steps - 1) * GIANT_STEP_COST


def baby_steps_for(dim: int, blocks: int) -> int:
    """The baby steps ``g`` of the blocks of a gallery of ``blocks`` blocks.

    A matcher holding ``B`` blocks pays ``g - 1`` probe rotations once and ``d/g - 1``
    giant steps per block: ``g`` is the power of two minimising :func:`query_cost` (about
    ``sqrt(1.5 * B * d)``: 32 for one block at 512-D or 1024-D, 256 from 43 blocks on at
    512-D), so small galleries get a small fixed cost and large ones few giant steps per
    block. ``g`` only grows with the gallery; blocks written under a smaller one are re-laid
    out by :func:`veilface.search.compaction.repack_gallery` (cheap: left rotations by
    multiples of the old ``g``).
    """
    candidates = [1 << k for k in range(dim.bit_length())]
    return min(candidates, key=lambda g: (query_cost(dim, g, max(1, blocks)), -g))
