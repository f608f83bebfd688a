"""API-key authentication (``X-API-Key`` or ``Authorization: Bearer``), scopes and audit."""

from __future__ import annotations

import functools
from collections.abc import Callable

from flask import current_app, g, request

from veilface import errors
from veilface.store.apikeys import authenticate
from veilface.store.models import AuditEntry


def presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_key(scope: str = "read") -> Callable:
    """Decorator: the request must carry a live key; ``scope='admin'`` for changes.

    A key bound to a gallery (CompreFace-style) acts on that gallery only: a view whose
    ``gallery`` argument names another one is forbidden.
    """

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            key = presented_key()
            if not key:
                raise errors.Unauthorized("send an API key in X-API-Key or Authorization: Bearer")
            gateway = current_app.extensions["veilface"]
            with gateway.session() as session:
                row = authenticate(session, key)
                g.api_key_id, g.api_key_scope, g.api_key_gallery = row.id, row.scope, row.gallery
            if scope == "admin" and g.api_key_scope != "admin":
                raise errors.Forbidden("this API key is read-only")
            bound = g.api_key_gallery
            if bound is not None and kwargs.get("gallery", bound) != bound:
                raise errors.Forbidden(f"this API key is bound to gallery {bound!r}")
            gateway.rate_limiter.check(g.api_key_id)
            return view(*args, **kwargs)

        return wrapped

    return decorator


def audit(action: str, gallery: str | None, subject: str | None = None, outcome: str = "ok") -> None:
    """Record who did what to which gallery: never an image, never a template."""
    gateway = current_app.extensions["veilface"]
    with gateway.session() as session:
        session.add(
            AuditEntry(
                api_key_id=g.get("api_key_id"),
                action=action,
                gallery=gallery,
                subject=subject,
                outcome=outcome,
            )
        )
