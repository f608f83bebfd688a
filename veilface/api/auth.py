"""API-key authentication (``X-API-Key`` or ``Authorization: Bearer``), scopes, limits and audit."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from flask import g, request

from veilface import errors
from veilface.api.params import current_gateway
from veilface.store.apikeys import authenticate
from veilface.store.models import ApiKey, AuditEntry

log = logging.getLogger(__name__)


def presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_key(scope: str = "read") -> Callable:
    """Decorator: the request must carry a live key; ``scope='admin'`` for changes.

    A key bound to a gallery (CompreFace-style) acts on that gallery only: a view whose
    ``gallery`` argument names another one is forbidden. Read and eval keys count against
    the per-key request limit; failed authentications count against the client address's.
    """

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            key = presented_key()
            if not key:
                raise errors.Unauthorized("send an API key in X-API-Key or Authorization: Bearer")
            gateway = current_gateway()
            row = _authenticated(key)
            g.api_key_id, g.api_key_scope, g.api_key_gallery = row.id, row.scope, row.gallery
            if scope == "admin" and g.api_key_scope != "admin":
                raise errors.Forbidden("this API key is read-only")
            bound = g.api_key_gallery
            if bound is not None and kwargs.get("gallery", bound) != bound:
                raise errors.Forbidden(f"this API key is bound to gallery {bound!r}")
            if g.api_key_scope != "admin":
                limit = gateway.limits.per_key
                limit.check(g.api_key_id, f"more than {limit.per_minute} requests per minute for this key")
            return view(*args, **kwargs)

        return wrapped

    return decorator


def _authenticated(key: str) -> ApiKey:
    """The live key row for ``key``; a failure is audited and counted against the client address,
    and an address past its failure allowance is refused before its key is even looked up."""
    gateway = current_gateway()
    address = request.remote_addr or "unknown"
    limit = gateway.limits.auth_failures
    message = f"more than {limit.per_minute} failed authentications per minute from this address"
    limit.refuse_if_spent(address, message)
    try:
        with gateway.session() as session:
            return authenticate(session, key)
    except errors.Unauthorized:
        failures = limit.count(address)
        log.warning("failed authentication from %s (%d this minute)", address, failures)
        audit("authenticate", None, outcome="unauthorized")
        raise


def limit_subject_verification(gallery: str, subject: str) -> None:
    """Count one verification against ``subject`` (read and eval keys): 429 past the per-subject limit.

    One named person is the easiest target of a read key holder who asks many questions, so the
    limit holds for every key together, not per key.
    """
    if g.api_key_scope == "admin":
        return
    limit = current_gateway().limits.per_subject
    limit.check(
        f"{gallery}/{subject}", f"more than {limit.per_minute} verifications per minute against this subject"
    )


def audit(action: str, gallery: str | None, subject: str | None = None, outcome: str = "ok") -> None:
    """Record who did what to which gallery: never an image, never a template."""
    gateway = current_gateway()
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
