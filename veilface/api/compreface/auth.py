"""A Veilface API key bound to a gallery, checked as CompreFace checks a face service's key."""

from __future__ import annotations

import functools
from collections.abc import Callable

from flask import g
from sqlalchemy.orm import Session

from veilface import errors
from veilface.api.auth import presented_key, require_key
from veilface.api.compreface.errors import Code, CompreFaceError
from veilface.api.params import current_gateway
from veilface.store import galleries as store

NO_SERVICE_YET_MESSAGE = (
    "Writing is not allowed: gallery {gallery!r} does not exist yet and this read-only key may not "
    "create it; an admin-scope key bound to it creates it on first use"
)
UNBOUND_KEY_MESSAGE = (
    "Face service with this API key not found: the key is not bound to a gallery "
    "(create one with `veilface keys create-api-key --gallery NAME --compreface`)"
)


def service_key(*, write: bool = False) -> Callable:
    """Decorator: a live key bound to a gallery; the view gets the gallery name first.

    ``write`` views need an admin-scope key. An admin key's gallery is created on first use,
    as a CompreFace service exists, empty, as soon as its key does; a read or eval key may not
    create it (403, nothing stored).
    """

    def decorator(view: Callable) -> Callable:
        @require_key("admin" if write else "read")
        def authorised(*args, **kwargs):
            gallery = g.api_key_gallery
            if not gallery:
                raise CompreFaceError(404, Code.MODEL_NOT_FOUND, UNBOUND_KEY_MESSAGE)
            with current_gateway().session() as session:
                if g.api_key_scope == "admin":
                    store.get_or_create_gallery(session, gallery)
                else:
                    _existing_gallery(session, gallery)
            return view(gallery, *args, **kwargs)

        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if not presented_key():
                raise CompreFaceError(400, Code.MISSING_REQUEST_HEADER, "Missing header: x-api-key")
            return authorised(*args, **kwargs)

        return wrapped

    return decorator


def _existing_gallery(session: Session, gallery: str) -> None:
    """A read or eval key's gallery must exist already: such a key creates nothing (403)."""
    try:
        store.get_gallery(session, gallery)
    except errors.UnknownGallery as exc:
        raise CompreFaceError(
            403, Code.WRITING_NOT_ALLOWED, NO_SERVICE_YET_MESSAGE.format(gallery=gallery)
        ) from exc
