"""Database access of the matcher: block diagonals, the delta, and the compaction writes.

All functions take an open :class:`sqlalchemy.orm.Session`; the caller owns the transaction
(see :func:`veilface.store.db.session_scope`). Only ciphertexts are read or written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from veilface.store.models import Block, BlockCiphertext, Template

#: Diagonals stored as they are (``g = dim``): blocks written before layouts were versioned.
SINGLE_STEP_LAYOUT = 1
#: Diagonals pre-rotated for ``baby_steps`` baby steps (:mod:`veilface.crypto.layout`).
BABY_GIANT_LAYOUT = 2


@dataclass(frozen=True)
class BlockRef:
    """Identity, version and layout of a packed block."""

    block_id: int
    block_no: int
    version: int
    dim: int
    filled: int
    layout_version: int
    #: ``g`` of the layout; ``dim`` for a single-step block.
    baby_steps: int


@dataclass(frozen=True)
class DeltaEntry:
    """A template in the delta: its row id and in-block position."""

    template_id: int
    block_no: int
    slot: int


def _ref(block: Block) -> BlockRef:
    baby_steps = block.dim if block.layout_version == SINGLE_STEP_LAYOUT else block.baby_steps
    return BlockRef(
        block.id, block.block_no, block.version, block.dim, block.filled, block.layout_version, baby_steps
    )


def block_refs(session: Session, gallery_id: int, model_version: str) -> dict[int, BlockRef]:
    """The packed blocks of a gallery, by block number (no ciphertexts read)."""
    rows = session.scalars(
        select(Block).where(Block.gallery_id == gallery_id, Block.model_version == model_version)
    )
    return {block.block_no: _ref(block) for block in rows}


def gallery_blocks(session: Session, gallery_id: int) -> list[tuple[str, int]]:
    """``(model_version, block_no)`` of every packed block of a gallery, in order."""
    rows = session.execute(
        select(Block.model_version, Block.block_no)
        .where(Block.gallery_id == gallery_id)
        .order_by(Block.model_version, Block.block_no)
    )
    return [(row.model_version, row.block_no) for row in rows]


def read_diagonals(session: Session, block_id: int) -> list[bytes]:
    """The diagonal ciphertexts of a block, in diagonal order."""
    rows = session.execute(
        select(BlockCiphertext.diagonal, BlockCiphertext.ciphertext)
        .where(BlockCiphertext.block_id == block_id)
        .order_by(BlockCiphertext.diagonal)
    ).all()
    if [row.diagonal for row in rows] != list(range(len(rows))):
        raise LookupError(f"block {block_id} has missing diagonals")
    return [row.ciphertext for row in rows]


def packed_slots(session: Session, gallery_id: int, model_version: str, block_no: int) -> list[int]:
    """Slots of the live templates folded into a block."""
    return list(
        session.scalars(
            select(Template.slot)
            .where(
                Template.gallery_id == gallery_id,
                Template.model_version == model_version,
                Template.block_no == block_no,
                Template.state == "packed",
            )
            .order_by(Template.slot)
        )
    )


def delta_index(session: Session, gallery_id: int, model_version: str) -> list[DeltaEntry]:
    """Every template of the gallery still in the delta (no ciphertexts read)."""
    rows = session.execute(
        select(Template.id, Template.block_no, Template.slot).where(
            Template.gallery_id == gallery_id,
            Template.model_version == model_version,
            Template.state == "delta",
            Template.ciphertext.is_not(None),
        )
    )
    return [DeltaEntry(row.id, row.block_no, row.slot) for row in rows]


def delta_ciphertexts(session: Session, template_ids: Iterable[int]) -> dict[int, bytes]:
    """Delta ciphertexts of the given templates (those still in the delta)."""
    ids = list(template_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(Template.id, Template.ciphertext).where(Template.id.in_(ids), Template.state == "delta")
    )
    return {row.id: row.ciphertext for row in rows if row.ciphertext is not None}


def block_delta(
    session: Session, gallery_id: int, model_version: str, block_no: int
) -> list[tuple[int, int, bytes]]:
    """``(template_id, slot, ciphertext)`` of a block's delta (a plain read: no lock, so that
    enrollments into the block go on while a compaction folds them)."""
    rows = session.execute(
        select(Template.id, Template.slot, Template.ciphertext)
        .where(
            Template.gallery_id == gallery_id,
            Template.model_version == model_version,
            Template.block_no == block_no,
            Template.state == "delta",
            Template.ciphertext.is_not(None),
        )
        .order_by(Template.slot)
    ).all()
    return [(row.id, row.slot, row.ciphertext) for row in rows]


def lock_delta_templates(session: Session, template_ids: Iterable[int]) -> set[int]:
    """Those of ``template_ids`` still in the delta, their rows locked by primary key (no range
    lock: inserts of new templates are not blocked)."""
    ids = list(template_ids)
    if not ids:
        return set()
    rows = session.scalars(
        select(Template.id)
        .where(Template.id.in_(ids), Template.state == "delta", Template.ciphertext.is_not(None))
        .with_for_update()
    )
    return set(rows)


def _block_query(gallery_id: int, model_version: str, block_no: int):
    return select(Block).where(
        Block.gallery_id == gallery_id, Block.model_version == model_version, Block.block_no == block_no
    )


def find_block(session: Session, gallery_id: int, model_version: str, block_no: int) -> BlockRef | None:
    """The block row (``None`` if the block does not exist yet), not locked."""
    block = session.scalars(_block_query(gallery_id, model_version, block_no)).one_or_none()
    return None if block is None else _ref(block)


def lock_block(session: Session, gallery_id: int, model_version: str, block_no: int) -> BlockRef | None:
    """The block row, locked for rewriting (``None`` if the block does not exist yet)."""
    block = session.scalars(_block_query(gallery_id, model_version, block_no).with_for_update()).one_or_none()
    return None if block is None else _ref(block)


def write_block(
    session: Session,
    gallery_id: int,
    model_version: str,
    block_no: int,
    dim: int,
    diagonals: Sequence[bytes],
    filled: int,
    baby_steps: int,
) -> BlockRef:
    """Create a block or replace its diagonals, laid out for ``baby_steps`` baby steps (layout 2),
    bumping its version."""
    if len(diagonals) != dim:
        raise ValueError(f"a block of dimension {dim} needs {dim} diagonals")
    block = session.scalars(
        select(Block).where(
            Block.gallery_id == gallery_id, Block.model_version == model_version, Block.block_no == block_no
        )
    ).one_or_none()
    if block is None:
        block = Block(
            gallery_id=gallery_id,
            model_version=model_version,
            block_no=block_no,
            dim=dim,
            version=1,
            filled=filled,
            layout_version=BABY_GIANT_LAYOUT,
            baby_steps=baby_steps,
        )
        session.add(block)
        session.flush()
    else:
        if block.dim != dim:
            raise ValueError(f"block {block_no} has dimension {block.dim}, not {dim}")
        block.version += 1
        block.filled = filled
        block.layout_version = BABY_GIANT_LAYOUT
        block.baby_steps = baby_steps
        session.execute(delete(BlockCiphertext).where(BlockCiphertext.block_id == block.id))
    for index, ciphertext in enumerate(diagonals):
        session.execute(
            BlockCiphertext.__table__.insert().values(
                block_id=block.id, diagonal=index, ciphertext=ciphertext
            )
        )
    session.flush()
    return _ref(block)


def mark_packed(session: Session, template_ids: Iterable[int]) -> None:
    """Templates folded into their block: state 'packed', delta ciphertext cleared."""
    ids = list(template_ids)
    if ids:
        session.execute(
            update(Template)
            .where(Template.id.in_(ids), Template.state == "delta")
            .values(state="packed", ciphertext=None)
        )
