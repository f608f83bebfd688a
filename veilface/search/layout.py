"""Where the database puts the n-th template of a gallery, and how its block is laid out."""

from __future__ import annotations

from veilface.crypto.params import DEFAULT_PARAMS, CkksParams

#: Cost of one giant step of a block (rescale, relinearisation and rotation of a partial sum
#: at the score level), in units of one baby step (a rotation of the probe at the packed
#: level); measured with :mod:`veilface.bench.he` (1.87 ms / 1.50 ms on the 2-core reference).
GIANT_STEP_COST = 1.25


def place(sequence: int, dim: int, params: CkksParams = DEFAULT_PARAMS) -> tuple[int, int]:
    """``(block_no, slot)`` of the template numbered ``sequence`` (from the gallery's slot counter)."""
    params.check_dim(dim)
    return divmod(sequence, params.block_capacity)


def query_cost(dim: int, baby_steps: int, blocks: int) -> float:
    """Per-query rotation cost, in baby steps, of ``blocks`` blocks laid out with ``baby_steps``:
    ``(g - 1) + blocks * (d/g - 1) * GIANT_STEP_COST`` (the ``d`` products per block are
    the same for every ``g`` and left out)."""
    return (baby_steps - 1) + blocks * (dim // baby_steps - 1) * GIANT_STEP_COST


def baby_steps_for(dim: int, block_no: int) -> int:
    """The baby steps ``g`` of block ``block_no`` when it is (re)written.

    A gallery that has block ``n`` has at least ``n + 1`` blocks, and a matcher holding
    ``B`` blocks pays ``g - 1`` probe rotations once and ``d/g - 1`` giant steps per block:
    ``g`` is the power of two minimising :func:`query_cost` for ``B = n + 1`` (about
    ``sqrt(1.25 * B * d)``: 32 for the first block at 512-D or 1024-D, 256 from about 50
    blocks on at 512-D), so small galleries get a small fixed cost and large ones keep
    few giant steps per block.
    """
    candidates = [1 << k for k in range(dim.bit_length())]
    return min(candidates, key=lambda g: (query_cost(dim, g, block_no + 1), -g))
