"""Galleries, subjects and template rows: the queries the gateway and the embedder share."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from veilface import errors
from veilface.store.models import Block, Gallery, SlotCounter, Subject, Template


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
        # Another transaction committed it first. A plain read would use this transaction's snapshot
        # (InnoDB's repeatable read), taken before that commit; a locking read sees the committed row.
        gallery = session.scalar(select(Gallery).where(Gallery.name == name).with_for_update(read=True))
    return gallery


def configure_gallery(session: Session, name: str, projection: str | None) -> Gallery:
    """Create a gallery, or change the projection of one that holds no template yet (never of a
    client-key gallery: it stores the templates its client encrypts, as they come)."""
    gallery = get_or_create_gallery(session, name)
    if gallery.projection != projection:
        if gallery.key_mode == "client":
            raise errors.ClientKeyGallery(f"gallery {name!r} holds its client's templates: no projection")
        if session.scalar(select(func.count(Template.id)).where(Template.gallery_id == gallery.id)):
            raise errors.Conflict(f"gallery {name!r} holds templates; its projection cannot change")
        gallery.projection = projection
    return gallery


def get_subject(session: Session, gallery: Gallery, name: str) -> Subject:
    subject = session.scalar(select(Subject).where(Subject.gallery_id == gallery.id, Subject.name == name))
    if subject is None:
        raise errors.UnknownSubject(f"subject {name!r} is not in gallery {gallery.name!r}")
    return subject


def get_or_create_subject(session: Session, gallery: Gallery, name: str) -> Subject:
    subject = session.scalar(select(Subject).where(Subject.gallery_id == gallery.id, Subject.name == name))
    if subject is not None:
        return subject
    try:
        with session.begin_nested():
            subject = Subject(gallery_id=gallery.id, name=name)
            session.add(subject)
    except IntegrityError:  # committed by another transaction first: see get_or_create_gallery
        subject = session.scalar(
            select(Subject)
            .where(Subject.gallery_id == gallery.id, Subject.name == name)
            .with_for_update(read=True)
        )
    return subject


def list_galleries(session: Session) -> list[dict]:
    """Every gallery with its subject and template counts."""
    subjects = select(Subject.gallery_id, func.count().label("n")).group_by(Subject.gallery_id).subquery()
    templates = (
        select(Template.gallery_id, func.count().label("n"))
        .where(Template.subject_id.is_not(None))  # not the hidden sentinels
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
        .outerjoin(Template, Template.subject_id == Subject.id)
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
        session.scalars(select(Template).where(Template.subject_id == subject.id).order_by(Template.id))
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


def slots_allocated(session: Session, gallery_id: int, model_version: str) -> int:
    """How many template positions of the gallery were ever handed out (the slot counter)."""
    where = (SlotCounter.gallery_id == gallery_id) & (SlotCounter.model_version == model_version)
    return session.scalar(select(SlotCounter.next_slot).where(where)) or 0


def slot_owners(session: Session, gallery_id: int, model_version: str) -> dict[tuple[int, int], SlotOwner]:
    """``(block_no, slot) -> owner`` for every live template; tombstoned slots and sentinels (no
    subject) are absent."""
    rows = session.execute(
        select(Template.block_no, Template.slot, Template.id, Subject.name)
        .join(Subject, Subject.id == Template.subject_id)
        .where(
            Template.gallery_id == gallery_id,
            Template.model_version == model_version,
        )
    )
    return {(block_no, slot): SlotOwner(tid, name) for block_no, slot, tid, name in rows}


def searchable_block_numbers(session: Session, gallery_id: int, model_version: str) -> list[int]:
    """Block numbers holding a packed block or delta templates: the units of sharding."""
    packed = select(Block.block_no).where(
        Block.gallery_id == gallery_id, Block.model_version == model_version
    )
    delta = select(Template.block_no).where(
        Template.gallery_id == gallery_id, Template.model_version == model_version, Template.state == "delta"
    )
    return sorted(set(session.scalars(packed.union(delta))))


def delta_size(session: Session, gallery_id: int, model_version: str) -> int:
    return (
        session.scalar(
            select(func.count(Template.id)).where(
                Template.gallery_id == gallery_id,
                Template.model_version == model_version,
                Template.state == "delta",
            )
        )
        or 0
    )


# -- template-level management (used by the CompreFace-compatible API) --------------------


@dataclass(frozen=True)
class TemplateRow:
    """One live template as listings show it: never its ciphertext."""

    template_id: int
    subject: str
    model_version: str


def list_templates(
    session: Session, gallery: Gallery, *, subject: str | None = None, offset: int = 0, limit: int = 20
) -> tuple[list[TemplateRow], int]:
    """A page of the live templates of ``gallery`` (oldest first) and the total count.

    ``subject`` narrows the listing to one subject; an unknown subject gives an empty page.
    """
    where = [Template.gallery_id == gallery.id]
    if subject is not None:
        where.append(Subject.name == subject)
    total = session.scalar(
        select(func.count(Template.id)).join(Subject, Subject.id == Template.subject_id).where(*where)
    )
    rows = session.execute(
        select(Template.id, Subject.name, Template.model_version)
        .join(Subject, Subject.id == Template.subject_id)
        .where(*where)
        .order_by(Template.id)
        .offset(offset)
        .limit(limit)
    )
    return [TemplateRow(tid, name, version) for tid, name, version in rows], total or 0


def get_live_template(session: Session, gallery: Gallery, template_id: int) -> tuple[Template, str]:
    """A live template of ``gallery`` with its subject's name; NotFound for any other id."""
    row = session.execute(
        select(Template, Subject.name)
        .join(Subject, Subject.id == Template.subject_id)
        .where(
            Template.id == template_id,
            Template.gallery_id == gallery.id,
        )
    ).first()
    if row is None:
        raise errors.NotFound(f"template {template_id} is not in gallery {gallery.name!r}")
    return row[0], row[1]


def delete_template(session: Session, template: Template) -> None:
    """Delete one template with its delta ciphertext; its slot is never reused.

    A packed copy of the template loses its owner at once, so :func:`slot_owners` no
    longer maps its slot and no search can return it; the same photo can be enrolled again.
    """
    session.delete(template)


def rename_subject(session: Session, gallery: Gallery, subject: Subject, new_name: str) -> Subject:
    """Give ``subject`` a new name; if that name is taken, merge into the existing subject.

    A merge moves every template to the target subject. Where both subjects hold the same
    image for the same model version, the target's row is kept.
    Returns the subject that carries ``new_name`` afterwards.
    """
    target = session.scalar(select(Subject).where(Subject.gallery_id == gallery.id, Subject.name == new_name))
    if target is None or target.id == subject.id:
        subject.name = new_name
        return subject
    _drop_merge_duplicates(session, subject, target)
    session.execute(update(Template).where(Template.subject_id == subject.id).values(subject_id=target.id))
    session.delete(subject)
    return target


def _drop_merge_duplicates(session: Session, source: Subject, target: Subject) -> None:
    """Before a merge, delete one row of every (model version, image) pair both subjects hold."""
    theirs = {
        (t.model_version, t.image_sha256): t
        for t in session.scalars(select(Template).where(Template.subject_id == target.id))
    }
    for mine in session.scalars(select(Template).where(Template.subject_id == source.id)):
        if (mine.model_version, mine.image_sha256) in theirs:
            session.delete(mine)
    session.flush()


def delete_all_subjects(session: Session, gallery: Gallery) -> int:
    """Empty ``gallery``: every subject, template and packed block; the gallery itself stays.

    Returns the number of subjects removed.
    """
    removed = session.scalar(select(func.count(Subject.id)).where(Subject.gallery_id == gallery.id))
    session.execute(delete(Template).where(Template.gallery_id == gallery.id))
    session.execute(delete(Block).where(Block.gallery_id == gallery.id))
    session.execute(delete(Subject).where(Subject.gallery_id == gallery.id))
    return removed or 0
