"""Compaction: fold a block's delta into its packed diagonals, and re-lay out old blocks,
with public keys only."""

from __future__ import annotations

import tenseal.sealapi as sealapi
from sqlalchemy.orm import Session, sessionmaker

from veilface.crypto.codec import Kind
from veilface.crypto.layout import giant_offset
from veilface.crypto.public import PublicContext
from veilface.search import repository
from veilface.search.delta import fold, load_template, merge_groups
from veilface.search.layout import baby_steps_for
from veilface.search.repository import BABY_GIANT_LAYOUT, BlockRef
from veilface.store.db import session_scope


def compact_block(
    ctx: PublicContext,
    sessions: sessionmaker[Session],
    gallery_id: int,
    model_version: str,
    block_no: int,
    dim: int,
    attempts: int = 3,
) -> int:
    """Fold the delta of one block; return how many templates (0: nothing to fold, or the block
    kept changing under ``attempts`` folds).

    Enrollments into the block are never blocked by the fold (seconds): a first short
    transaction reads the delta, the block and the plan without locks; the fold runs outside
    any transaction; a second one locks the block row and the folded templates by primary key,
    checks that neither changed meanwhile (another compaction, a deleted template; then the
    fold is discarded and done again), writes the new diagonals (version + 1) in the gallery's
    planned layout (:func:`planned_baby_steps`; a block of another layout is re-laid out
    first), marks the templates 'packed' and clears their delta ciphertexts. Tombstoned
    templates are not folded (they are no longer in the delta).
    """
    for _ in range(attempts):
        with session_scope(sessions) as session:
            block = repository.find_block(session, gallery_id, model_version, block_no)
            rows = repository.block_delta(session, gallery_id, model_version, block_no)
            if not rows:
                return 0
            baby_steps = planned_baby_steps(session, gallery_id, model_version, dim, block_no)
            stored = None if block is None else _read_diagonals(ctx, session, block)
        diagonals = None if block is None else _in_planned_layout(ctx, block, stored, baby_steps)
        groups = merge_groups(ctx, dim, ((slot, load_template(ctx, blob, dim)) for _, slot, blob in rows))
        folded = fold(ctx, dim, groups, diagonals, baby_steps)
        blobs = [ctx.dumps(ciphertext, Kind.DIAGONAL) for ciphertext in folded]
        template_ids = {template_id for template_id, _, _ in rows}
        with session_scope(sessions) as session:
            current = repository.lock_block(session, gallery_id, model_version, block_no)
            if current != block or repository.lock_delta_templates(session, template_ids) != template_ids:
                continue
            repository.write_block(
                session,
                gallery_id,
                model_version,
                block_no,
                dim,
                blobs,
                filled=(block.filled if block else 0) + len(rows),
                baby_steps=baby_steps,
            )
            repository.mark_packed(session, template_ids)
            return len(rows)
    return 0


def planned_baby_steps(session: Session, gallery_id: int, model_version: str, dim: int, block_no: int) -> int:
    """The baby steps of the gallery's blocks once block ``block_no`` exists
    (:func:`~veilface.search.layout.baby_steps_for` of its block count)."""
    numbers = repository.block_refs(session, gallery_id, model_version)
    return baby_steps_for(dim, max([block_no, *numbers]) + 1)


def repack_gallery(
    ctx: PublicContext,
    sessions: sessionmaker[Session],
    gallery_id: int,
    *,
    limit: int | None = None,
    single_step: bool = True,
) -> tuple[int, int]:
    """Re-lay out the blocks of a gallery that are not in its planned layout, one block per
    transaction; returns ``(repacked, blocks)``. Safe to stop and run again.

    ``limit`` bounds how many blocks are rewritten (the rest wait for the next call);
    ``single_step=False`` leaves single-step blocks alone (their re-layout costs about ten
    key switches per diagonal, 10-20 s a block: ``veilface galleries repack`` does it).
    """
    with session_scope(sessions) as session:
        blocks = repository.gallery_blocks(session, gallery_id)
    repacked = 0
    for model_version, block_no in blocks:
        if limit is not None and repacked >= limit:
            break
        repacked += repack_block(ctx, sessions, gallery_id, model_version, block_no, single_step=single_step)
    return repacked, len(blocks)


def repack_block(
    ctx: PublicContext,
    sessions: sessionmaker[Session],
    gallery_id: int,
    model_version: str,
    block_no: int,
    *,
    single_step: bool = True,
) -> bool:
    """Re-lay out one packed block in the gallery's planned layout; True if it was rewritten.

    As in :func:`compact_block`, the rotations run outside any transaction and the block is
    written only if it did not change meanwhile. False (nothing written) when the block is
    already laid out so, changed meanwhile, or is a single-step block and ``single_step`` is
    False; the delta of the block is left to the next compaction.
    """
    with session_scope(sessions) as session:
        block = repository.find_block(session, gallery_id, model_version, block_no)
        if block is None:
            raise LookupError(f"block {block_no} of gallery {gallery_id} ({model_version}) does not exist")
        baby_steps = planned_baby_steps(session, gallery_id, model_version, block.dim, block_no)
        if _in_layout(block, baby_steps) or (block.layout_version != BABY_GIANT_LAYOUT and not single_step):
            return False
        stored = _read_diagonals(ctx, session, block)
    blobs = [ctx.dumps(c, Kind.DIAGONAL) for c in _in_planned_layout(ctx, block, stored, baby_steps)]
    with session_scope(sessions) as session:
        if repository.lock_block(session, gallery_id, model_version, block_no) != block:
            return False
        repository.write_block(
            session, gallery_id, model_version, block_no, block.dim, blobs, block.filled, baby_steps
        )
    return True


def relayout(
    ctx: PublicContext, diagonals: list[sealapi.Ciphertext], current: int, planned: int
) -> list[sealapi.Ciphertext]:
    """Diagonals laid out for ``current`` baby steps, rotated into the layout of ``planned``.

    Diagonal ``i`` moves left by ``giant_offset(i, current) - giant_offset(i, planned)``
    (modulo the slots: a move right is a long move left), with the power-of-two Galois keys
    that every key set has: a one-off cost per diagonal of about one key switch when ``g``
    grows (a multiple of the old ``g`` below the new one), about nine from a single-step block.
    """
    return [
        ctx.rotate(diagonal, (giant_offset(i, current) - giant_offset(i, planned)) % ctx.slots)
        for i, diagonal in enumerate(diagonals)
    ]


def _in_layout(block: BlockRef, baby_steps: int) -> bool:
    return block.layout_version == BABY_GIANT_LAYOUT and block.baby_steps == baby_steps


def _read_diagonals(ctx: PublicContext, session: Session, block: BlockRef) -> list[sealapi.Ciphertext]:
    return [
        ctx.loads(blob, Kind.DIAGONAL, level=ctx.packed_level)
        for blob in repository.read_diagonals(session, block.block_id)
    ]


def _in_planned_layout(
    ctx: PublicContext, block: BlockRef, diagonals: list[sealapi.Ciphertext], baby_steps: int
) -> list[sealapi.Ciphertext]:
    if _in_layout(block, baby_steps):
        return diagonals
    return relayout(ctx, diagonals, block.baby_steps, baby_steps)
