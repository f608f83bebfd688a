"""Liveness (``/healthz``), readiness (``/readyz``) and Prometheus metrics (``/metrics``).

``/healthz`` and a bare ``/readyz`` (``{"ready": bool}``) answer anyone: they say nothing about the
deployment. The detailed readiness report (worker names, model, threshold, key fingerprint) needs an
admin API key; ``/metrics`` needs an admin API key or ``VEILFACE_METRICS_TOKEN`` as a bearer token.
"""

from __future__ import annotations

import hmac
import time

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import text

from veilface.api.auth import presented_key, require_key
from veilface.api.params import current_gateway
from veilface.store.presence import EMBEDDER, MATCHER, live_workers

REQUESTS = Counter("veilface_http_requests_total", "HTTP requests", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "veilface_http_request_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)

FORGED_ANSWERS = Counter(
    "veilface_refused_matcher_answers_total",
    "Matcher answers refused because they failed the gateway's score checks",
    ["task"],
)


def _check_database(gateway) -> dict:
    with gateway.session() as session:
        session.execute(text("SELECT 1"))
    return {"ok": True}


def _check_broker(gateway) -> dict:
    with gateway.transport.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return {"ok": True}


def _check_workers(gateway, kind: str) -> dict:
    """At least one live worker of this key set, and none of another: a worker of another key set
    (a half-done key rotation, a wrong key volume) is never sent work and fails readiness."""
    with gateway.session() as session:
        workers = live_workers(session, kind, gateway.settings.worker_ttl_s)
    good = [w for w in workers if w.key_fingerprint == gateway.keys.fingerprint]
    foreign = [w.name for w in workers if w.key_fingerprint != gateway.keys.fingerprint]
    return {
        "ok": bool(good) and not foreign,
        "online": [{"name": w.name, "model_version": w.model_version, "provider": w.provider} for w in good],
        "refused_foreign_keys": foreign,
    }


def _check_model(gateway) -> dict:
    """The active version can be loaded: every file of its networks exists (named when one is missing)."""
    model = gateway.registry.active()
    missing = [path.name for path in model.missing_files()]
    return {"ok": not missing, "active": model.version, "threshold": model.threshold, "missing": missing}


def _check_embedder_model(gateway) -> dict:
    """Embedders must run the active model version, else their probes would be unsearchable.

    An embedder on another version refuses every task (it would answer 503), so one is enough
    to fail readiness.
    """
    result = _check_workers(gateway, EMBEDDER)
    active = gateway.registry.active().version
    stale = [w["name"] for w in result["online"] if w["model_version"] != active]
    result["ok"] = result["ok"] and not stale
    result["wrong_model_version"] = stale
    return result


def _readiness_report() -> tuple[bool, dict]:
    """Whether every check passes, and each check by name with its ``ok`` (a check that raises
    fails with its exception's name)."""
    gateway = current_gateway()
    checks = {
        "database": _check_database,
        "broker": _check_broker,
        "embedder": _check_embedder_model,
        "he_matcher": lambda gw: _check_workers(gw, MATCHER),
        "model": _check_model,
    }
    report: dict = {"keys": {"ok": True, "fingerprint": gateway.keys.fingerprint}}
    for name, check in checks.items():
        try:
            report[name] = check(gateway)
        except Exception as exc:
            report[name] = {"ok": False, "error": type(exc).__name__}
    return all(item["ok"] for item in report.values()), report


@require_key("admin")
def _detailed_readiness():
    ready, report = _readiness_report()
    return jsonify({"ready": ready, "checks": report}), 200 if ready else 503


def _metrics_text() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


_admin_metrics_text = require_key("admin")(_metrics_text)


def _is_metrics_token(token: str | None, expected: str) -> bool:
    return bool(token and expected) and hmac.compare_digest(token.encode(), expected.encode())


def register(app: Flask) -> None:
    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        LATENCY.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        """``{"ready": bool}`` for anyone; with an API key, which must be an admin one, every check."""
        if presented_key() is not None:
            return _detailed_readiness()
        ready, _ = _readiness_report()
        return jsonify({"ready": ready}), 200 if ready else 503

    @app.get("/metrics")
    def metrics():
        """Prometheus metrics, for the metrics token or an admin API key."""
        token = current_gateway().settings.metrics_token
        if _is_metrics_token(presented_key(), token):
            return _metrics_text()
        return _admin_metrics_text()
