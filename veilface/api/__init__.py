"""The gateway's Flask application (``create_app``): HTTP API, health, metrics, OpenAPI."""

from __future__ import annotations

import logging

from flask import Flask

from veilface.api import client_keys, compreface, console, health, index, openapi, v1
from veilface.api import errors as error_handlers
from veilface.api.gateway import Gateway
from veilface.api.params import install_gateway
from veilface.api.transport import TaskTransport
from veilface.config import Settings, check_secrets, load_settings
from veilface.crypto.sealing import PayloadSealer
from veilface.crypto.secret import SecretContext
from veilface.messaging.app import make_celery
from veilface.messaging.signing import TaskSigner
from veilface.store.apikeys import sync_bootstrap_key
from veilface.store.db import make_engine, require_schema, session_factory, upsert_once
from veilface.store.keysets import announce_key_set

log = logging.getLogger(__name__)


def build_gateway(settings: Settings) -> Gateway:
    """The production gateway: the database, the secret key set and the task transport of ``settings``.

    The schema must exist (``veilface db migrate``): the gateway holds no DDL right. The key
    set is announced, so a worker of another key set refuses to run.
    """
    engine = make_engine(settings)
    require_schema(engine)
    sessions = session_factory(engine)
    keys = SecretContext.load(settings.secret_context_path)
    announce_key_set(sessions, keys.fingerprint)
    transport = TaskTransport(
        make_celery(settings),
        TaskSigner.from_file(settings.task_key_path, settings.message_ttl_s),
        PayloadSealer.from_file(settings.queue_key_path),
        settings.task_timeout_s,
    )
    log.info("gateway ready: key set %s, database %s", keys.fingerprint[:12], engine.dialect.name)
    return Gateway(settings, sessions, keys, transport)


def create_app(settings: Settings | None = None, gateway: Gateway | None = None) -> Flask:
    """Build the gateway app over ``gateway`` (default: :func:`build_gateway` of ``settings``).

    The bootstrap API key of ``settings`` is created, or revoked when it changed. Raises
    :class:`~veilface.config.SettingError` for a bootstrap key or metrics token too short.
    Tests pass a gateway of their own to run the app in-process without workers.
    """
    settings = settings or load_settings()
    check_secrets(settings)
    gateway = gateway or build_gateway(settings)
    upsert_once(gateway.sessions, lambda session: sync_bootstrap_key(session, settings.bootstrap_api_key))

    app = Flask("veilface")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json = error_handlers.JSONProvider(app)
    install_gateway(app, gateway)
    error_handlers.register(app)
    health.register(app)
    app.register_blueprint(index.blueprint)
    app.register_blueprint(v1.blueprint)
    app.register_blueprint(client_keys.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(console.blueprint)
    app.register_blueprint(compreface.blueprint)
    return app
