"""Batch packer: the data owner encrypts whole blocks directly (``dim`` encryptions per block)."""

from __future__ import annotations

import numpy as np

from veilface.crypto.codec import Kind
from veilface.crypto.public import PublicContext


def pack_block(ctx: PublicContext, templates: np.ndarray, slots: np.ndarray | None = None) -> list[bytes]:
    """Encrypt the diagonals of one block holding ``templates[k]`` at in-block ``slots[k]``.

    ``templates`` is ``(n, dim)``; rows are L2-normalised here. ``slots`` defaults to
    ``0 .. n-1``. Diagonals are encrypted directly at the packed level.
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
    diagonals = layout.diagonals(templates / norms, slots)
    return [ctx.dumps(ctx.encrypt(row, ctx.packed_level), Kind.DIAGONAL) for row in diagonals]
