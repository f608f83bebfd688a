"""SQLAlchemy models mirroring ``sql/schema.sql`` (a test checks the two agree).

Nothing here holds a plaintext template or an image: templates exist only as CKKS
ciphertexts, either one per template while in a gallery's delta
(``templates.ciphertext``) or folded into packed blocks (``block_ciphertexts``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    VARBINARY,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from veilface.store import API_KEY_SCOPES


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


#: LONGBLOB on MySQL/MariaDB, BLOB elsewhere.
Blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
#: Auto-increment ids: BIGINT on MySQL, INTEGER on SQLite (where only INTEGER autoincrements).
Id = BigInteger().with_variant(Integer(), "sqlite")

TEMPLATE_STATES = ("delta", "packed")
#: Name of the one ``key_sets`` row: the key set of this deployment.
DEPLOYMENT_KEY_SET = "deployment"
#: Whose key set encrypts a gallery: the deployment's, the gallery's own (its secret key on the
#: gateway), or one the client uploaded (the server never holds its secret key).
KEY_MODES = ("deployment", "gallery", "client")


class Base(DeclarativeBase):
    pass


class Gallery(Base):
    __tablename__ = "galleries"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    #: Template dimension kept for this gallery: the model's own, or a compact projection.
    projection: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: One of :data:`KEY_MODES`.
    key_mode: Mapped[str] = mapped_column(
        String(16), default="deployment", server_default="deployment", nullable=False
    )
    #: Fingerprint of the gallery's public key set (:class:`PublicKeySetPart`); NULL in deployment mode.
    key_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Subject(Base):
    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("gallery_id", "name", name="uq_subject_name"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class SlotCounter(Base):
    """Next free slot of a gallery for one model version (slots are never reused)."""

    __tablename__ = "slot_counters"

    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_slot: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)


class Template(Base):
    """One enrolled face. ``ciphertext`` is its delta ciphertext until compaction packs it.

    A row with no subject is a hidden sentinel (:class:`Sentinel`): stored, searched and
    compacted like any template, never a candidate.
    """

    __tablename__ = "templates"
    __table_args__ = (
        UniqueConstraint(
            "gallery_id", "subject_id", "model_version", "image_sha256", name="uq_template_image"
        ),
        UniqueConstraint("gallery_id", "model_version", "block_no", "slot", name="uq_template_slot"),
        Index("ix_templates_state", "gallery_id", "model_version", "state"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), nullable=False)
    subject_id: Mapped[int | None] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE"), nullable=True
    )
    model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    block_no: Mapped[int] = mapped_column(Integer, nullable=False)
    slot: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(
        Enum(*TEMPLATE_STATES, name="template_state"), default="delta", nullable=False
    )
    ciphertext: Mapped[bytes | None] = mapped_column(Blob, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Block(Base):
    """A packed block of a gallery: ``dim`` ciphertexts holding up to ``slots`` templates."""

    __tablename__ = "blocks"
    __table_args__ = (UniqueConstraint("gallery_id", "model_version", "block_no", name="uq_block"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), nullable=False)
    model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    block_no: Mapped[int] = mapped_column(Integer, nullable=False)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    #: Bumped at each compaction that rewrites the block; matchers reload on change.
    version: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    filled: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    #: How the diagonals are stored: 1 single-step (as written before layouts were versioned),
    #: 2 pre-rotated for ``baby_steps`` baby steps (see :mod:`veilface.crypto.layout`).
    layout_version: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    #: ``g`` of a layout-2 block; NULL for layout 1 (which searches as ``g = dim``).
    baby_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow, nullable=False)


class Sentinel(Base):
    """A sentinel template: the seed of its random unit vector, sealed with the gateway-only
    ``sentinel.key`` (:mod:`veilface.store.sentinels`)."""

    __tablename__ = "sentinels"

    template_id: Mapped[int] = mapped_column(
        ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    sealed_seed: Mapped[bytes] = mapped_column(VARBINARY(128), nullable=False)


class BlockCiphertext(Base):
    __tablename__ = "block_ciphertexts"

    block_id: Mapped[int] = mapped_column(ForeignKey("blocks.id", ondelete="CASCADE"), primary_key=True)
    diagonal: Mapped[int] = mapped_column(Integer, primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(Blob, nullable=False)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    #: SHA-256 of the key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    scope: Mapped[str] = mapped_column(Enum(*API_KEY_SCOPES, name="api_key_scope"), nullable=False)
    #: Set for keys bound to one gallery (CompreFace-style keys).
    gallery: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class AuditEntry(Base):
    """Who did what to which gallery; never an image or a template."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    api_key_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    gallery: Mapped[str | None] = mapped_column(String(128), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)


class Worker(Base):
    """Heartbeats of the running workers, read by ``/readyz`` and the shard router."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(191), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    queue: Mapped[str] = mapped_column(String(191), nullable=False)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class KeySet(Base):
    """The deployment's key set: the fingerprint of the gateway's CKKS context, which every worker's
    public context must share (:mod:`veilface.store.keysets`). One row, named :data:`DEPLOYMENT_KEY_SET`."""

    __tablename__ = "key_sets"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    announced_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class PublicKeySetPart(Base):
    """One chunk of a gallery's serialized public context (~16 MB with its Galois keys, too close to
    MySQL's packet limit for one row): ``part`` numbers them from 0 (:mod:`veilface.store.keysets`)."""

    __tablename__ = "public_key_set_parts"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(Blob, nullable=False)
