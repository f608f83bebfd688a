"""Where each template value sits in the slots of a block (pure numpy, no keys).

A block serves ``2 * slots`` templates of dimension ``d``: the template in lane 0 of slot
position ``j`` is stored in the real part, the one in lane 1 in the imaginary part, so one
complex product scores two templates. Diagonal ``i`` holds at position ``j`` the value
``T_j[(j + i) mod d]`` (Halevi-Shoup); the probe is replicated, ``p[m mod d]`` at ``m``.

Diagonals are stored pre-rotated for a baby-step giant-step search with ``g`` baby steps:
diagonal ``i = g*k + b`` is kept as ``rot(diag_i, -g*k)`` (rotated right by its *giant
offset* ``g*k``), so that a block's score ``sum_i diag_i * rot(p, i)`` becomes
``sum_k rot(sum_b D_{g*k+b} * rot(p, b), g*k)``: ``g`` rotations of the probe shared by every
block, ``d/g - 1`` rotations of partial sums per block. ``g = d`` is the single-step layout
(no pre-rotation) that blocks had before layouts were versioned.

Slot numbers (what the database allocates, ``0 .. 2*slots-1``) map to positions so that
consecutive slots fill one *group* first: group ``c`` holds positions ``r*d + c`` for every
segment ``r`` in both lanes. A template in its delta form occupies the window
``[j, j + d)`` with ``p``-aligned values (``T[m mod d]`` at ``m``); windows of one group are
disjoint, so the templates of a group add up into one ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def giant_offset(diagonal: int, baby_steps: int) -> int:
    """How far right diagonal ``diagonal`` is stored rotated with ``baby_steps`` baby steps."""
    return baby_steps * (diagonal // baby_steps)


@dataclass(frozen=True)
class BlockLayout:
    """Slot arithmetic of a block of ``slots`` complex slots and template dimension ``dim``."""

    slots: int
    dim: int

    @property
    def segments(self) -> int:
        return self.slots // self.dim

    @property
    def capacity(self) -> int:
        """Templates per block."""
        return 2 * self.slots

    @property
    def group_size(self) -> int:
        """Templates per delta group (disjoint windows in both lanes)."""
        return 2 * self.segments

    def group_of(self, slot: int) -> int:
        """The delta group ``c`` of ``slot``."""
        return slot // self.group_size

    def locate(self, slots: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """``(lane, position)`` of each slot number."""
        slots = np.asarray(slots, dtype=np.int64)
        if np.any((slots < 0) | (slots >= self.capacity)):
            raise ValueError(f"slot outside [0, {self.capacity})")
        group, rest = np.divmod(slots, self.group_size)
        lane, segment = np.divmod(rest, self.segments)
        return lane, segment * self.dim + group

    def check_baby_steps(self, baby_steps: int) -> None:
        """Raise ValueError unless ``baby_steps`` is a power of two in ``[1, dim]``."""
        if baby_steps < 1 or baby_steps > self.dim or baby_steps & (baby_steps - 1):
            raise ValueError(f"baby steps {baby_steps} must be a power of two in [1, {self.dim}]")

    def template_vector(self, template: np.ndarray, slot: int) -> np.ndarray:
        """The delta form of one template: its window at the slot's position, in its lane."""
        lane, position = (int(x) for x in self.locate(slot))
        window = (position + np.arange(self.dim)) % self.slots
        values = np.zeros(self.slots, dtype=np.complex128)
        values[window] = template[window % self.dim] * (1j if lane else 1.0)
        return values

    def probe_vector(self, probe: np.ndarray) -> np.ndarray:
        """The probe replicated over every slot: ``p[m mod d]`` at ``m``."""
        return np.tile(np.asarray(probe, dtype=np.float64), self.segments)

    def diagonals(self, templates: np.ndarray, slots: np.ndarray, baby_steps: int) -> np.ndarray:
        """The ``dim`` diagonals (rows, complex) of a block holding ``templates[k]`` at ``slots[k]``,
        each rotated right by its giant offset for ``baby_steps`` baby steps."""
        self.check_baby_steps(baby_steps)
        lane, position = self.locate(slots)
        packed = np.zeros((self.slots, self.dim), dtype=np.complex128)
        np.add.at(packed, position, templates * np.where(lane, 1j, 1.0)[:, None])
        index = (np.arange(self.slots)[:, None] + np.arange(self.dim)[None, :]) % self.dim
        rows = np.take_along_axis(packed, index, axis=1).T
        for i in range(baby_steps, self.dim):
            rows[i] = np.roll(rows[i], giant_offset(i, baby_steps))
        return rows

    def residue_mask(self, residue: int) -> np.ndarray:
        """1.0 at the positions ``m`` with ``m mod dim == residue``, 0 elsewhere."""
        return (np.arange(self.slots) % self.dim == residue % self.dim).astype(np.float64)

    def slot_scores(self, decoded: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Scores of ``slots`` read from a decrypted score vector (complex, one entry per position)."""
        lane, position = self.locate(slots)
        values = np.asarray(decoded)[position]
        return np.where(lane == 1, values.imag, values.real)
