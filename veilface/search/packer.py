"""Batch packer: the data owner encrypts whole blocks directly (``dim`` encryptions per block)."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from veilface.crypto.codec import Kind
from veilface.crypto.public import PublicContext
from veilface.search import repository
from veilface.search.layout import baby_steps_for


def pack_block(
    ctx: PublicContext, templates: np.ndarray, baby_steps: int, slots: np.ndarray | None = None
) -> list[bytes]:
    """Encrypt the diagonals of one block holding ``templates[k]`` at in-block ``slots[k]``.

    ``templates`` is ``(n, dim)``; rows are L2-normalised here. ``slots`` defaults to
    ``0 .. n-1``. Diagonals are laid out for ``baby_steps`` baby steps (pre-rotated in the
    clear, at no cost; see :func:`veilface.search.layout.baby_steps_for`) and encrypted
    directly at the packed level.
    """
    templates = np.asarray(templates, dtype=np.float64)
    if templates.ndim != 2 or not np.all(np.isfinite(templates)):
        raise ValueError("templates must be a finite (n, dim) array")
    norms = np.linalg.norm(templates, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("a template must not be the zero vector")
    layout = ctx.layout(templates.shape[1])
    slots = np.arange(len(templates)) if slots is None else np.asarray(slots)
    if len(np.unique(slots)) != len(slots) or len(slots) != len(templates):
        raise ValueError("one distinct slot per template is required")
    diagonals = layout.diagonals(templates / norms, slots, baby_steps)
    return [ctx.dumps(ctx.encrypt(row, ctx.packed_level), Kind.DIAGONAL) for row in diagonals]


def import_block(
    ctx: PublicContext,
    session: Session,
    gallery_id: int,
    model_version: str,
    block_no: int,
    templates: np.ndarray,
    slots: np.ndarray | None = None,
    blocks: int | None = None,
) -> repository.BlockRef:
    """Bulk import: pack ``templates`` (at ``slots``) into block ``block_no`` in the layout
    planned for a gallery of ``blocks`` blocks (default ``block_no + 1``: pass the count the
    import ends with) and write it, in the caller's transaction (template rows are the caller's)."""
    templates = np.asarray(templates, dtype=np.float64)
    dim = templates.shape[-1]
    baby_steps = baby_steps_for(dim, blocks or block_no + 1)
    diagonals = pack_block(ctx, templates, baby_steps, slots)
    return repository.write_block(
        session, gallery_id, model_version, block_no, dim, diagonals, len(templates), baby_steps
    )
