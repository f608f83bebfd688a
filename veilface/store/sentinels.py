"""The gateway's keeper of the hidden sentinel templates: adds them to galleries, hands them out.

Gateway only: it holds ``sentinel.key``, which seals each sentinel's seed in the ``sentinels``
table and decides which gallery positions are sentinels (:func:`veilface.search.sentinels.is_sentinel_slot`).
A sentinel is encrypted with the public context of its gallery's key set, like an enrolled face,
and stored as a template row with no subject, in the delta of its block; compaction folds it like
any other.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from veilface.config import Settings
from veilface.crypto.codec import peek_dim
from veilface.crypto.keyfiles import read_key
from veilface.crypto.public import PublicContext, encrypt_template
from veilface.crypto.sealing import PayloadSealer
from veilface.search.layout import place
from veilface.search.sentinels import MAX_RUN, SEED_BYTES, SentinelRef, is_sentinel_slot, sentinel_vector
from veilface.store import galleries as store
from veilface.store.keysets import PublicContexts
from veilface.store.models import Block, Sentinel, SlotCounter, Template


class SentinelKeeper:
    """Adds sentinels as a gallery grows and lists them, with their seeds, for a search."""

    def __init__(
        self,
        key: bytes,
        per_block: int,
        public_context_path: Path,
        key_sets: PublicContexts | None = None,
    ):
        self._key = key
        self._seeds = PayloadSealer(key)
        self.per_block = per_block
        self._public_context_path = public_context_path
        self._context: PublicContext | None = None
        self._key_sets = key_sets

    @classmethod
    def from_settings(cls, settings: Settings, key_sets: PublicContexts | None = None) -> SentinelKeeper:
        """The keeper of ``settings``; ``key_sets`` loads the public contexts of galleries with keys
        of their own."""
        return cls(
            read_key(settings.sentinel_key_path),
            settings.sentinels_per_block,
            settings.public_context_path,
            key_sets,
        )

    def context_for(self, key_set: str | None) -> PublicContext:
        """The public context of ``key_set`` (``None``: the deployment's, loaded on first use: only
        adding a sentinel needs it)."""
        if key_set is not None:
            if self._key_sets is None:
                raise ValueError("this keeper was given no public key sets of galleries")
            return self._key_sets.get(key_set)
        if self._context is None:
            self._context = PublicContext.load(self._public_context_path)
        return self._context

    def top_up(
        self, session: Session, gallery_id: int, model_version: str, key_set: str | None = None
    ) -> int:
        """Give the gallery's next positions to sentinels while the keyed coin says so; returns
        how many were added (none before the gallery's first template of ``model_version``).

        Each is encrypted under the gallery's key set ``key_set`` (``None``: the deployment's). The
        slot counter row is locked first, so no enrollment takes the position meanwhile.
        """
        if self.per_block <= 0:
            return 0
        dim = template_dim(session, gallery_id, model_version)
        if dim is None:
            return 0
        context = self.context_for(key_set)
        rate = self.per_block / context.params.block_capacity
        added = 0
        while added < MAX_RUN:
            counter = session.scalar(
                select(SlotCounter.next_slot)
                .where(SlotCounter.gallery_id == gallery_id, SlotCounter.model_version == model_version)
                .with_for_update()
            )
            if counter is None or not is_sentinel_slot(self._key, gallery_id, model_version, counter, rate):
                return added
            sequence = store.next_sequence(session, gallery_id, model_version)
            self._add(session, context, gallery_id, model_version, dim, sequence)
            added += 1
        return added

    def _add(
        self,
        session: Session,
        context: PublicContext,
        gallery_id: int,
        model_version: str,
        dim: int,
        sequence: int,
    ) -> None:
        block_no, slot = place(sequence, dim, context.params)
        seed = secrets.token_bytes(SEED_BYTES)
        template = Template(
            gallery_id=gallery_id,
            subject_id=None,
            model_version=model_version,
            image_sha256=secrets.token_hex(32),  # looks like the hash of a photo
            block_no=block_no,
            slot=slot,
            state="delta",
            ciphertext=encrypt_template(context, sentinel_vector(seed, dim), slot),
        )
        session.add(template)
        session.flush()
        sealed = self._seeds.seal_data(seed, _seed_binding(template.id, gallery_id, model_version))
        session.add(Sentinel(template_id=template.id, sealed_seed=sealed))
        session.flush()

    def roster(self, session: Session, gallery_id: int, model_version: str) -> list[SentinelRef]:
        """Every sentinel of the gallery's ``model_version`` templates, with its opened seed."""
        rows = session.execute(
            select(Template.id, Template.block_no, Template.slot, Sentinel.sealed_seed)
            .join(Sentinel, Sentinel.template_id == Template.id)
            .where(Template.gallery_id == gallery_id, Template.model_version == model_version)
            .order_by(Template.block_no, Template.slot)
        )
        return [
            SentinelRef(
                block_no,
                slot,
                self._seeds.open_data(
                    sealed, _seed_binding(tid, gallery_id, model_version), "a sentinel seed"
                ),
            )
            for tid, block_no, slot, sealed in rows
        ]


def live_positions(session: Session, gallery_id: int, model_version: str) -> set[tuple[int, int]]:
    """``(block_no, slot)`` of every sentinel of the gallery that still exists."""
    rows = session.execute(
        select(Template.block_no, Template.slot)
        .join(Sentinel, Sentinel.template_id == Template.id)
        .where(Template.gallery_id == gallery_id, Template.model_version == model_version)
    )
    return {(block_no, slot) for block_no, slot in rows}


def template_dim(session: Session, gallery_id: int, model_version: str) -> int | None:
    """The dimension of the gallery's ``model_version`` templates (``None``: it has none yet)."""
    blob = session.scalar(
        select(Template.ciphertext)
        .where(
            Template.gallery_id == gallery_id,
            Template.model_version == model_version,
            Template.ciphertext.is_not(None),
        )
        .limit(1)
    )
    if blob is not None:
        return peek_dim(blob)
    return session.scalar(
        select(Block.dim).where(Block.gallery_id == gallery_id, Block.model_version == model_version).limit(1)
    )


def _seed_binding(template_id: int, gallery_id: int, model_version: str) -> bytes:
    """A seed opens only for its own row: one copied to another template does not."""
    return f"sentinel-seed:{template_id}:{gallery_id}:{model_version}".encode()
