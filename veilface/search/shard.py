"""The matcher's in-memory shard of one gallery: packed blocks plus the delta."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import tenseal.sealapi as sealapi
from sqlalchemy.orm import Session

from veilface.crypto.codec import Kind
from veilface.crypto.public import PublicContext
from veilface.search import repository
from veilface.search.delta import load_template, merge_groups, score_delta
from veilface.search.engine import MaskCache, PreparedProbe, prepare_probe, score_block
from veilface.search.repository import BlockRef
from veilface.search.results import ScoreResult


@dataclass
class LoadedBlock:
    """A packed block held in memory."""

    ref: BlockRef
    diagonals: list[sealapi.Ciphertext]
    slots: tuple[int, ...]


@dataclass
class BlockDelta:
    """The delta templates of one block and their merged group ciphertexts."""

    templates: dict[int, tuple[int, sealapi.Ciphertext]] = field(default_factory=dict)
    groups: dict[int, sealapi.Ciphertext] = field(default_factory=dict)

    @property
    def slots(self) -> tuple[int, ...]:
        return tuple(sorted(slot for slot, _ in self.templates.values()))


class Shard:
    """The blocks of one gallery and model version that one matcher holds in memory.

    Block numbers are the unit of sharding: the gateway gives each block number (its
    packed block and its delta) to one live matcher process (see :mod:`veilface.search.routing`)
    and merges what they return. ``blocks=None`` holds every block.
    """

    def __init__(
        self,
        ctx: PublicContext,
        gallery_id: int,
        model_version: str,
        dim: int,
        blocks: Iterable[int] | None = None,
    ):
        ctx.params.check_dim(dim)
        self.ctx = ctx
        self.gallery_id = gallery_id
        self.model_version = model_version
        self.dim = dim
        self.assigned: frozenset[int] | None = None
        self.assign(blocks)
        self.blocks: dict[int, LoadedBlock] = {}
        self.delta: dict[int, BlockDelta] = {}
        self._masks = MaskCache(ctx, dim)

    def assign(self, blocks: Iterable[int] | None) -> None:
        """Hold exactly ``blocks`` from the next :meth:`refresh` on (``None``: all of them)."""
        self.assigned = None if blocks is None else frozenset(blocks)

    def owns(self, block_no: int) -> bool:
        """Whether block ``block_no`` belongs to this shard."""
        return self.assigned is None or block_no in self.assigned

    @property
    def template_count(self) -> int:
        """Live templates searched: packed slots plus delta templates."""
        packed = sum(len(block.slots) for block in self.blocks.values())
        return packed + sum(len(delta.templates) for delta in self.delta.values())

    @property
    def resident_bytes(self) -> int:
        """Memory held by the packed diagonals (raw SEAL polynomials)."""
        per_ciphertext = 2 * 2 * self.ctx.params.poly_modulus_degree * 8
        return sum(len(block.diagonals) for block in self.blocks.values()) * per_ciphertext

    def refresh(self, session: Session) -> None:
        """Bring blocks (by version) and the delta up to date with the database.

        Unchanged blocks are not re-read; new delta templates are fetched, removed ones
        (compacted or deleted) dropped, and the affected groups re-merged. Call it inside
        one transaction so that blocks and delta form a consistent snapshot.
        """
        self._refresh_blocks(session)
        self._refresh_delta(session)

    def _refresh_blocks(self, session: Session) -> None:
        refs = {
            block_no: ref
            for block_no, ref in repository.block_refs(session, self.gallery_id, self.model_version).items()
            if self.owns(block_no)
        }
        for block_no in set(self.blocks) - set(refs):
            del self.blocks[block_no]
        for block_no, ref in refs.items():
            loaded = self.blocks.get(block_no)
            if loaded is not None and loaded.ref.version == ref.version:
                continue
            if ref.dim != self.dim:
                raise ValueError(f"block {block_no} has dimension {ref.dim}, the shard {self.dim}")
            diagonals = [
                self.ctx.loads(blob, Kind.DIAGONAL, level=self.ctx.packed_level)
                for blob in repository.read_diagonals(session, ref.block_id)
            ]
            slots = repository.packed_slots(session, self.gallery_id, self.model_version, block_no)
            self.blocks[block_no] = LoadedBlock(ref, diagonals, tuple(slots))

    def _refresh_delta(self, session: Session) -> None:
        wanted: dict[int, dict[int, int]] = {}
        for entry in repository.delta_index(session, self.gallery_id, self.model_version):
            if self.owns(entry.block_no):
                wanted.setdefault(entry.block_no, {})[entry.template_id] = entry.slot
        known = {tid for delta in self.delta.values() for tid in delta.templates}
        fetched = repository.delta_ciphertexts(
            session, (tid for ids in wanted.values() for tid in ids if tid not in known)
        )
        for block_no in set(self.delta) - set(wanted):
            del self.delta[block_no]
        for block_no, ids in wanted.items():
            current = self.delta.get(block_no, BlockDelta())
            templates = {
                tid: current.templates[tid]
                if tid in current.templates
                else (slot, load_template(self.ctx, fetched[tid], self.dim))
                for tid, slot in ids.items()
                if tid in current.templates or tid in fetched
            }
            if templates.keys() != current.templates.keys():
                groups = merge_groups(self.ctx, self.dim, templates.values())
                self.delta[block_no] = BlockDelta(templates, groups)

    def search(self, probe: bytes) -> list[ScoreResult]:
        """Score one encrypted probe against every block and delta of the shard.

        Returns one score ciphertext per packed block and one per block with a delta, each
        with the slots it covers. Raises :class:`InvalidCiphertext` for a bad probe.
        """
        (results,) = self.search_batch([probe])
        return results

    def search_batch(self, probes: Sequence[bytes]) -> list[list[ScoreResult]]:
        """:meth:`search` for every probe of one request (the faces of one image), in order.

        Every probe is parsed first, so a bad one fails the batch before any work. The probes
        are then scored one after the other on the blocks held in memory: the blocks are
        loaded once (by :meth:`refresh`) for all of them, while only one probe's baby-step
        rotations (up to ``baby_steps`` ciphertexts) are held at a time.
        """
        pending = deque([self.prepare(probe) for probe in probes])
        results = []
        while pending:
            prepared = pending.popleft()  # dropped with its rotations once scored
            results.append([*self.search_blocks(prepared), *self.search_delta(prepared)])
        return results

    @property
    def baby_steps(self) -> int:
        """Probe rotations a query needs: the largest ``g`` among the blocks with live slots."""
        return max((block.ref.baby_steps for block in self.blocks.values() if block.slots), default=1)

    def prepare(self, probe: bytes) -> PreparedProbe:
        """The per-query work shared by all blocks (parsing and rotating the probe)."""
        return prepare_probe(self.ctx, probe, self.dim, self.baby_steps)

    def search_blocks(self, prepared: PreparedProbe) -> Iterator[ScoreResult]:
        """One score result per packed block with live slots."""
        for block_no in sorted(self.blocks):
            block = self.blocks[block_no]
            if block.slots:
                scores = score_block(self.ctx, block.diagonals, block.ref.baby_steps, prepared)
                yield ScoreResult(
                    block_no,
                    block.ref.version,
                    "block",
                    self.dim,
                    block.slots,
                    self.ctx.dumps(scores, Kind.SCORE),
                )

    def search_delta(self, prepared: PreparedProbe) -> Iterator[ScoreResult]:
        """One score result per block with delta templates."""
        for block_no in sorted(self.delta):
            delta = self.delta[block_no]
            scores = score_delta(self.ctx, delta.groups, prepared, self._masks)
            version = self.blocks[block_no].ref.version if block_no in self.blocks else 0
            yield ScoreResult(
                block_no, version, "delta", self.dim, delta.slots, self.ctx.dumps(scores, Kind.SCORE)
            )
