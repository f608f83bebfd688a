"""The delta: templates enrolled since the last compaction, searched and folded in groups.

The templates of one delta group ``c`` (see :mod:`veilface.crypto.layout`) sit in disjoint
windows, so their ciphertexts add up into one group ciphertext ``U_c``.

* Search: ``U_c * p``, relinearise, rescale, rotate-and-sum over windows of ``dim`` slots,
  then multiply by the group's position mask so that only whole scores remain (no partial
  sums reach the gateway); the groups of a block add into one score ciphertext.
* Fold (compaction): diagonal ``i`` of the block gains ``rot(sum_c U_c * M_{(c+i) mod d}, i)``,
  stored rotated right by its giant offset (:func:`veilface.crypto.layout.giant_offset`), so
  the rotation is by ``i mod g`` only: one plaintext mask product per (group, diagonal), one
  rescale and one rotation per diagonal shared by every template folded into the block.
  Masks are encoded at the scale of the dropped prime, so folded diagonals keep the exact
  scale 2^40.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import tenseal.sealapi as sealapi

from veilface.crypto import codec
from veilface.crypto.codec import Kind
from veilface.crypto.layout import giant_offset
from veilface.crypto.public import PublicContext
from veilface.errors import InvalidCiphertext
from veilface.search.engine import MaskCache, PreparedProbe


def load_template(ctx: PublicContext, blob: bytes, dim: int) -> sealapi.Ciphertext:
    """Parse one delta template ciphertext of dimension ``dim`` (top level)."""
    if codec.peek_dim(blob) != dim:
        raise InvalidCiphertext(f"template is not of dimension {dim}")
    return ctx.loads(blob, Kind.TEMPLATE, level=ctx.top_level)


def merge_groups(
    ctx: PublicContext, dim: int, templates: Iterable[tuple[int, sealapi.Ciphertext]]
) -> dict[int, sealapi.Ciphertext]:
    """Sum the delta ciphertexts ``(slot, ciphertext)`` of one block into one ciphertext per group."""
    layout = ctx.layout(dim)
    groups: dict[int, sealapi.Ciphertext] = {}
    for slot, ciphertext in templates:
        group = layout.group_of(slot)
        if group in groups:
            ctx.evaluator.add_inplace(groups[group], ciphertext)
        else:
            groups[group] = ctx.copy(ciphertext)
    return groups


def score_delta(
    ctx: PublicContext, groups: Mapping[int, sealapi.Ciphertext], probe: PreparedProbe, masks: MaskCache
) -> sealapi.Ciphertext:
    """One score ciphertext (score level) for the delta groups of one block."""
    evaluator = ctx.evaluator
    total = None
    for group, merged in groups.items():
        current = sealapi.Ciphertext()
        evaluator.multiply(merged, probe.top, current)
        evaluator.relinearize_inplace(current, ctx.relin_keys)
        evaluator.rescale_to_next_inplace(current)
        step = 1
        while step < probe.dim:
            evaluator.add_inplace(current, ctx.rotate(current, step))
            step <<= 1
        evaluator.multiply_plain_inplace(current, masks.get(group, tuple(ctx.packed_level), ctx.params.scale))
        if total is None:
            total = current
        else:
            evaluator.add_inplace(total, current)
    evaluator.rescale_to_next_inplace(total)
    return total


def fold(
    ctx: PublicContext,
    dim: int,
    groups: Mapping[int, sealapi.Ciphertext],
    diagonals: list[sealapi.Ciphertext] | None,
    baby_steps: int,
) -> list[sealapi.Ciphertext]:
    """Fold delta groups into a block's diagonals (packed level, laid out with ``baby_steps``);
    ``None`` starts an empty block.

    Returns the new diagonals; the input list is updated in place when given. Each step
    needs the masks of residues ``(c + i) mod d``; consecutive groups share all but one.
    """
    evaluator = ctx.evaluator
    masks = MaskCache(ctx, dim, maxsize=len(groups) + 1)
    level = tuple(ctx.top_level)
    result = diagonals if diagonals is not None else [None] * dim
    for i in range(dim):
        accumulated = None
        for group, merged in groups.items():
            product = sealapi.Ciphertext()
            evaluator.multiply_plain(merged, masks.get((group + i) % dim, level, ctx.top_prime), product)
            if accumulated is None:
                accumulated = product
            else:
                evaluator.add_inplace(accumulated, product)
        evaluator.rescale_to_next_inplace(accumulated)
        rotated = ctx.rotate(accumulated, i - giant_offset(i, baby_steps))
        if result[i] is None:
            result[i] = rotated
        else:
            evaluator.add_inplace(result[i], rotated)
    return result
