"""Galleries, subjects and template rows: the queries the gateway and the embedder share."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from veilface import errors
from veilface.store.models import Block, Gallery, SlotCounter, Subject, Template

LIVE_STATES = ("delta", "packed")


@dataclass(frozen=True)
class SlotOwner:
    """Who a gallery slot belongs to, as the gateway needs it to rank decrypted scores."""

    template_id: int
    subject: str


def get_gallery(session: Session, name: str) -> Gallery:
    gallery = session.scalar(select(Gallery).where(Gallery.name == name))
    if gallery is None:
        raise errors.UnknownGallery(f"gallery {name!r} does not exist")
    return gallery


def get_or_create_gallery(session: Session, name: str) -> Gallery:
    """Galleries are created on first use; concurrent creators end up with the same row."""
    gallery = session.scalar(select(Gallery).where(Gallery.name == name))
    if gallery is not None:
        return gallery
    try:
        with session.begin_nested():
            gallery = Gallery(name=name)
            session.add(gallery)
    except IntegrityError:
        gallery = session.scalar(select(Gallery).where(Gallery.name == name))
    return gallery


def get_subject(session: Session, gallery: Gallery, name: str) -> Subject:
    subject = session.scalar(
        select(Subject).where(Subject.gallery_id == gallery.id, Subject.name == name)
    )
    if subject is None:
        raise errors.UnknownSubject(f"subject {name!r} is not in gallery {gallery.name!r}")
    return subject


def get_or_create_subject(session: Session, gallery: Gallery, name: str) -> Subject:
    subject = session.scalar(
        select(Subject).where(Subject.gallery_id == gallery.id, Subject.name == name)
    )
    if subject is not None:
        return subject
    try:
        with session.begin_nested():
            subject = Subject(gallery_id=gallery.id, name=name)
            session.add(subject)
    except IntegrityError:
        subject = get_subject(session, gallery, name)
    return subject


def list_galleries(session: Session) -> list[dict]:
    """Every gallery with its subject and template counts."""
    subjects = (
        select(Subject.gallery_id, func.count().label("n")).group_by(Subject.gallery_id).subquery()
    )
    templates = (
        select(Template.gallery_id, func.count().label("n"))
        .where(Template.state.in_(LIVE_STATES))
        .group_by(Template.gallery_id)
        .subquery()
    )
    rows = session.execute(
        select(Gallery.name, Gallery.created_at, subjects.c.n, templates.c.n)
        .outerjoin(subjects, subjects.c.gallery_id == Gallery.id)
        .outerjoin(templates, templates.c.gallery_id == Gallery.id)
        .order_by(Gallery.name)
    )
    return [
        {"name": name, "subjects": n_subj or 0, "templates": n_tpl or 0, "created_at": created.isoformat()}
        for name, created, n_subj, n_tpl in rows
    ]


def list_subjects(session: Session, gallery: Gallery) -> list[dict]:
    """Subjects of ``gallery`` with their live template count per model version."""
    rows = session.execute(
        select(Subject.name, Template.model_version, func.count(Template.id))
        .outerjoin(Template, (Template.subject_id == Subject.id) & Template.state.in_(LIVE_STATES))
        .where(Subject.gallery_id == gallery.id)
        .group_by(Subject.name, Template.model_version)
        .order_by(Subject.name)
    )
    subjects: dict[str, dict] = {}
    for name, version, count in rows:
        entry = subjects.setdefault(name, {"subject": name, "templates": 0, "model_versions": {}})
        if version is not None:
            entry["templates"] += count
            entry["model_versions"][version] = count
    return list(subjects.values())


def subject_templates(session: Session, subject: Subject) -> list[Template]:
    return list(
        session.scalars(
            select(Template)
            .where(Template.subject_id == subject.id, Template.state.in_(LIVE_STATES))
            .order_by(Template.id)
        )
    )


def delete_subject(session: Session, subject: Subject) -> int:
    """Remove a subject and every ciphertext it owns; returns the number of templates removed.

    Delta ciphertexts go with their rows. Slots already folded into packed blocks lose
    their owner at once, so no search can return them again.
    """
    removed = session.scalar(select(func.count(Template.id)).where(Template.subject_id == subject.id))
    session.execute(delete(Template).where(Template.subject_id == subject.id))
    session.delete(subject)
    return removed or 0


def delete_gallery(session: Session, gallery: Gallery) -> None:
    """Drop a gallery with its subjects, templates and packed blocks."""
    session.execute(delete(Template).where(Template.gallery_id == gallery.id))
    session.execute(delete(Block).where(Block.gallery_id == gallery.id))
    session.execute(delete(Subject).where(Subject.gallery_id == gallery.id))
    session.delete(gallery)


def find_template(
    session: Session, gallery_id: int, subject_id: int, model_version: str, image_sha256: str
) -> Template | None:
    return session.scalar(
        select(Template).where(
            Template.gallery_id == gallery_id,
            Template.subject_id == subject_id,
            Template.model_version == model_version,
            Template.image_sha256 == image_sha256,
        )
    )


def next_sequence(session: Session, gallery_id: int, model_version: str) -> int:
    """Reserve the next never-used template position of a gallery for a model version.

    The increment comes first, so the row (MySQL) or the database (SQLite) is locked for
    writing before the value is read: two enrollments never get the same position.
    """
    where = (SlotCounter.gallery_id == gallery_id) & (SlotCounter.model_version == model_version)
    bumped = session.execute(update(SlotCounter).where(where).values(next_slot=SlotCounter.next_slot + 1))
    if bumped.rowcount == 0:
        try:
            with session.begin_nested():
                session.add(SlotCounter(gallery_id=gallery_id, model_version=model_version, next_slot=1))
            return 0
        except IntegrityError:
            session.execute(update(SlotCounter).where(where).values(next_slot=SlotCounter.next_slot + 1))
    return session.scalar(select(SlotCounter.next_slot).where(where)) - 1


def slot_owners(session: Session, gallery_id: int, model_version: str) -> dict[tuple[int, int], SlotOwner]:
    """``(block_no, slot) -> owner`` for every live template; tombstoned slots are absent."""
    rows = session.execute(
        select(Template.block_no, Template.slot, Template.id, Subject.name)
        .join(Subject, Subject.id == Template.subject_id)
        .where(
            Template.gallery_id == gallery_id,
            Template.model_version == model_version,
            Template.state.in_(LIVE_STATES),
        )
    )
    return {(block_no, slot): SlotOwner(tid, name) for block_no, slot, tid, name in rows}


def live_blocks(session: Session, gallery_id: int, model_version: str) -> list[Block]:
    return list(
        session.scalars(
            select(Block)
            .where(Block.gallery_id == gallery_id, Block.model_version == model_version)
            .order_by(Block.block_no)
        )
    )


def delta_size(session: Session, gallery_id: int, model_version: str) -> int:
    return session.scalar(
        select(func.count(Template.id)).where(
            Template.gallery_id == gallery_id,
            Template.model_version == model_version,
            Template.state == "delta",
        )
    ) or 0
