"""Homomorphic kernels of the packed engine: probe preparation and block scoring."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import tenseal.sealapi as sealapi

from veilface.crypto import codec
from veilface.crypto.codec import Kind
from veilface.crypto.public import PublicContext
from veilface.errors import InvalidCiphertext


@dataclass
class PreparedProbe:
    """A probe ready for scoring: as received (top level) and its baby-step rotations (packed level).

    ``baby_steps`` is the largest ``g`` among the blocks it will meet (see
    :mod:`veilface.crypto.layout`); the rotations ``rot(p, b)``, ``b < g``, are computed on
    first use, once per query, and shared by every block; a search that only meets delta
    templates never pays for them.
    """

    ctx: PublicContext
    dim: int
    top: sealapi.Ciphertext
    baby_steps: int = 1

    @cached_property
    def rotations(self) -> list[sealapi.Ciphertext]:
        """``rot(p, b)`` for ``b < baby_steps``: mod-switched to the packed level first (cheaper
        key switches), then sequential single steps, one key switch each."""
        current = sealapi.Ciphertext()
        self.ctx.evaluator.mod_switch_to_next(self.top, current)
        rotations = [current]
        for _ in range(1, self.baby_steps):
            current = self.ctx.rotate(current, 1)
            rotations.append(current)
        return rotations


def prepare_probe(ctx: PublicContext, blob: bytes, dim: int, baby_steps: int = 1) -> PreparedProbe:
    """Parse a probe of dimension ``dim`` for blocks of up to ``baby_steps`` baby steps;
    raises :class:`InvalidCiphertext` unless the probe has dimension ``dim``."""
    if codec.peek_dim(blob) != dim:
        raise InvalidCiphertext(f"probe is not of dimension {dim}")
    ctx.layout(dim).check_baby_steps(baby_steps)
    return PreparedProbe(ctx, dim, ctx.loads(blob, Kind.PROBE, level=ctx.top_level), baby_steps)


def score_block(
    ctx: PublicContext, diagonals: list[sealapi.Ciphertext], baby_steps: int, probe: PreparedProbe
) -> sealapi.Ciphertext:
    """Scores of one block laid out with ``baby_steps`` (``g``) baby steps: score level, size 3.

    Partial sums ``P_k = sum_b D_{g*k+b} * rot(p, b)`` (unrelinearised, rescaled once each)
    are combined by Horner's rule ``(..(P_{K-1} >> g) + P_{K-2} ..) >> g) + P_0``, rotating
    left by ``g`` after relinearising; ``P_0`` is added last, so the result keeps size 3,
    the score level and the scale of the single-step kernel (``g = d``: one partial sum).
    """
    if len(diagonals) != probe.dim:
        raise ValueError(f"a block of dimension {probe.dim} has {probe.dim} diagonals, not {len(diagonals)}")
    if baby_steps > probe.baby_steps:
        raise ValueError(f"a block of {baby_steps} baby steps needs a probe prepared for as many")
    evaluator = ctx.evaluator
    rotations = probe.rotations[:baby_steps]
    total = None
    product = sealapi.Ciphertext()
    for first in reversed(range(0, probe.dim, baby_steps)):
        partial = sealapi.Ciphertext()
        evaluator.multiply(diagonals[first], rotations[0], partial)
        for diagonal, rotation in zip(diagonals[first + 1 : first + baby_steps], rotations[1:], strict=True):
            evaluator.multiply(diagonal, rotation, product)
            evaluator.add_inplace(partial, product)
        evaluator.rescale_to_next_inplace(partial)
        if total is not None:
            evaluator.relinearize_inplace(total, ctx.relin_keys)
            total = ctx.rotate(total, baby_steps)
            evaluator.add_inplace(partial, total)
        total = partial
    return total


class MaskCache:
    """Encoded residue masks (``1`` where ``m mod dim == k``), memoised per level and scale."""

    def __init__(self, ctx: PublicContext, dim: int, maxsize: int = 256):
        self._ctx = ctx
        self._layout = ctx.layout(dim)
        self.get = lru_cache(maxsize=maxsize)(self._encode)

    def _encode(self, residue: int, level: tuple[int, ...], scale: float) -> sealapi.Plaintext:
        return self._ctx.encode(self._layout.residue_mask(residue), list(level), scale)
