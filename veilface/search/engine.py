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
    """A probe ready for scoring: as received (top level) and its ``dim`` rotations (packed level).

    The rotations are computed on first use, once per query, and shared by every block;
    a search that only meets delta templates never pays for them.
    """

    ctx: PublicContext
    dim: int
    top: sealapi.Ciphertext

    @cached_property
    def rotations(self) -> list[sealapi.Ciphertext]:
        """``rot(p, i)`` for ``i < dim``: mod-switched to the packed level first (cheaper key
        switches), then sequential single steps, one key switch each."""
        current = sealapi.Ciphertext()
        self.ctx.evaluator.mod_switch_to_next(self.top, current)
        rotations = [current]
        for _ in range(1, self.dim):
            current = self.ctx.rotate(current, 1)
            rotations.append(current)
        return rotations


def prepare_probe(ctx: PublicContext, blob: bytes, dim: int) -> PreparedProbe:
    """Parse a probe of dimension ``dim``; raises :class:`InvalidCiphertext` otherwise."""
    if codec.peek_dim(blob) != dim:
        raise InvalidCiphertext(f"probe is not of dimension {dim}")
    return PreparedProbe(ctx, dim, ctx.loads(blob, Kind.PROBE, level=ctx.top_level))


def score_block(
    ctx: PublicContext, diagonals: list[sealapi.Ciphertext], probe: PreparedProbe
) -> sealapi.Ciphertext:
    """Scores of one block: sum of ``diag_i * rot(p, i)``, unrelinearised (size 3), rescaled once."""
    evaluator = ctx.evaluator
    total = sealapi.Ciphertext()
    product = sealapi.Ciphertext()
    evaluator.multiply(diagonals[0], probe.rotations[0], total)
    for diagonal, rotation in zip(diagonals[1:], probe.rotations[1:], strict=True):
        evaluator.multiply(diagonal, rotation, product)
        evaluator.add_inplace(total, product)
    evaluator.rescale_to_next_inplace(total)
    return total


class MaskCache:
    """Encoded residue masks (``1`` where ``m mod dim == k``), memoised per level and scale."""

    def __init__(self, ctx: PublicContext, dim: int, maxsize: int = 256):
        self._ctx = ctx
        self._layout = ctx.layout(dim)
        self.get = lru_cache(maxsize=maxsize)(self._encode)

    def _encode(self, residue: int, level: tuple[int, ...], scale: float) -> sealapi.Plaintext:
        return self._ctx.encode(self._layout.residue_mask(residue), list(level), scale)
