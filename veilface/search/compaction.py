"""Compaction: fold a block's delta into its packed diagonals, with public keys only."""

from __future__ import annotations

from sqlalchemy.orm import Session

from veilface.crypto.codec import Kind
from veilface.crypto.public import PublicContext
from veilface.search import repository
from veilface.search.delta import fold, load_template, merge_groups


def compact_block(
    ctx: PublicContext, session: Session, gallery_id: int, model_version: str, block_no: int, dim: int
) -> int:
    """Fold the delta of one block, in the caller's transaction; return how many templates.

    Locks the block and its delta rows, writes the new diagonals (version + 1), marks the
    templates 'packed' and clears their delta ciphertexts. Tombstoned templates are not
    folded (they are no longer in the delta).
    """
    block = repository.lock_block(session, gallery_id, model_version, block_no)
    rows = repository.lock_block_delta(session, gallery_id, model_version, block_no)
    if not rows:
        return 0
    groups = merge_groups(ctx, dim, ((slot, load_template(ctx, blob, dim)) for _, slot, blob in rows))
    diagonals = None
    if block is not None:
        diagonals = [
            ctx.loads(blob, Kind.DIAGONAL, level=ctx.packed_level)
            for blob in repository.read_diagonals(session, block.block_id)
        ]
    folded = fold(ctx, dim, groups, diagonals)
    repository.write_block(
        session,
        gallery_id,
        model_version,
        block_no,
        dim,
        [ctx.dumps(ciphertext, Kind.DIAGONAL) for ciphertext in folded],
        filled=(block.filled if block else 0) + len(rows),
    )
    repository.mark_packed(session, (template_id for template_id, _, _ in rows))
    return len(rows)
