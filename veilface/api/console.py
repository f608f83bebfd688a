"""The web console: enroll, identify, verify and manage galleries from a browser.

The console is a set of static pages (HTML, CSS and one script, no build step and nothing
loaded from another origin) that call the same JSON API v1 as any other client. The API key
the operator signs in with stays in the tab's ``sessionStorage`` and travels only in the
``X-API-Key`` header of the script's own requests: it is never put in a URL, a cookie or a
form that the browser would submit by itself. The console sets no cookie at all, so there is
no ambient authority a cross-site request could borrow, and CSRF does not apply (see
``docs/console.md``).

Besides the pages, the console has one read-scoped JSON endpoint, ``/console/api/status``,
for what API v1 does not report: queue depths, the CKKS parameters and who holds the key.
Every console response carries a strict Content-Security-Policy (scripts from this origin
only, no inline script or style) and the usual anti-framing and no-sniffing headers.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, jsonify, redirect, render_template, url_for

from veilface.api.auth import require_key
from veilface.api.params import current_gateway
from veilface.messaging.messages import EMBED_QUEUE, MATCH_QUEUE
from veilface.store.presence import MATCHER, live_workers

if TYPE_CHECKING:
    from veilface.api.gateway import Gateway

log = logging.getLogger(__name__)

blueprint = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static/console",
    static_url_path="/static",
)

#: The console's pages in navigation order: (endpoint name, title). ``login`` is not listed.
PAGES = (
    ("enroll", "Enroll"),
    ("identify", "Identify"),
    ("verify", "Verify"),
    ("galleries", "Galleries"),
    ("status", "Status"),
)
_TITLES = dict(PAGES, login="Sign in")

#: Applied to every console response, pages, static files, JSON and errors alike.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=(), payment=(), usb=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

#: Seconds a queue-depth probe may take before the status reports the depths as unknown.
QUEUE_PROBE_TIMEOUT_S = 2.0


@blueprint.after_request
def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if response.mimetype in ("text/html", "application/json"):
        # Pages hold no data, but nothing the console shows should outlive the tab in a cache.
        response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/")
def home():
    return redirect(url_for("console.login"))


def _page(name: str) -> str:
    return render_template(f"console/{name}.html", page=name, title=_TITLES[name], pages=PAGES)


@blueprint.get("/login")
def login():
    return _page("login")


@blueprint.get("/enroll")
def enroll():
    return _page("enroll")


@blueprint.get("/identify")
def identify():
    return _page("identify")


@blueprint.get("/verify")
def verify():
    return _page("verify")


@blueprint.get("/galleries")
def galleries():
    return _page("galleries")


@blueprint.get("/status")
def status():
    return _page("status")


@blueprint.get("/api/status")
@require_key("read")
def status_report():
    """What the Status page shows beyond ``/readyz``: model, CKKS parameters, queues, key holder."""
    gw = current_gateway()
    model = gw.registry.active()
    return jsonify(
        {
            "model": {"active": model.version, "threshold": model.threshold, "dim": model.dim},
            "ckks": ckks_parameters(),
            "queues": queue_depths(gw),
            "keys": {
                "fingerprint": gw.keys.fingerprint,
                "secret_key_holder": "gateway",
                "workers_hold": "public context only (public, relinearisation and Galois keys)",
            },
        }
    )


def ckks_parameters() -> dict[str, Any] | None:
    """The deployment's CKKS parameters as plain JSON, or ``None`` if they cannot be read.

    Read defensively: the parameter object's fields and a few derived properties are taken
    when present, and anything that is not a number, a string or a list of them is left out.
    """
    try:
        from veilface.crypto.params import DEFAULT_PARAMS
    except Exception:
        log.warning("CKKS parameters unavailable", exc_info=True)
        return None
    if dataclasses.is_dataclass(DEFAULT_PARAMS):
        raw = {f.name: getattr(DEFAULT_PARAMS, f.name, None) for f in dataclasses.fields(DEFAULT_PARAMS)}
    elif isinstance(DEFAULT_PARAMS, dict):
        raw = dict(DEFAULT_PARAMS)
    else:
        raw = {k: v for k, v in vars(DEFAULT_PARAMS).items() if not k.startswith("_")}
    for derived in ("slots", "block_capacity"):
        if derived not in raw:
            try:
                raw[derived] = getattr(DEFAULT_PARAMS, derived)
            except Exception:
                continue
    return {str(k): _plain(v) for k, v in raw.items() if _plain(v) is not None}


def _plain(value: Any) -> Any:
    """``value`` if it is JSON-safe (numbers, strings, flat lists of them), else ``None``."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, int | float | str) for v in value):
        return list(value)
    return None


def queue_depths(gw: Gateway) -> dict[str, int] | None:
    """Messages waiting on the embed queue, the shared match queue and each matcher's own queue.

    A passive declare is one cheap round trip per queue (``LLEN`` on Redis, a directory
    listing on the filesystem transport). On Redis an empty queue does not exist, so "not
    found" means zero; on these virtual transports the channel stays usable after it. ``None``
    when the broker cannot be asked quickly: the Status page then shows what ``/readyz`` reports.
    """
    from kombu.exceptions import ChannelError

    with gw.session() as session:
        own = [w.queue for w in live_workers(session, MATCHER, gw.settings.worker_ttl_s)]
    names = list(dict.fromkeys([EMBED_QUEUE, MATCH_QUEUE, *own]))
    depths: dict[str, int] = {}
    try:
        with gw.transport.celery.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=QUEUE_PROBE_TIMEOUT_S)
            channel = conn.default_channel
            for name in names:
                try:
                    depths[name] = channel.queue_declare(queue=name, passive=True).message_count
                except ChannelError:
                    depths[name] = 0
    except Exception:
        log.warning("queue depths unavailable", exc_info=True)
        return None
    return depths
