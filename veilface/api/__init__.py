"""The gateway's Flask application (``create_app``): HTTP API, health, metrics, OpenAPI."""

from __future__ import annotations

import logging

from flask import Flask

from veilface.api import compreface, console, health, index, openapi, v1
from veilface.api import errors as error_handlers
from veilface.api.gateway import Gateway
from veilface.config import Settings, check_secrets, load_settings
from veilface.crypto.sealing import PayloadSealer
from veilface.crypto.secret import SecretContext
from veilface.messaging.app import make_celery
from veilface.messaging.signing import TaskSigner
from veilface.store.apikeys import sync_bootstrap_key
from veilface.store.db import make_engine, require_schema, session_factory, upsert_once
from veilface.store.presence import announce_key_set

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the gateway app: loads the secret key, creates the bootstrap key.

    The schema must exist (``veilface db migrate``): the gateway holds no DDL right. Raises
    :class:`~veilface.config.SettingError` for a bootstrap key or metrics token too short.
    """
    settings = settings or load_settings()
    check_secrets(settings)
    app = Flask("veilface")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json = error_handlers.JSONProvider(app)

    engine = make_engine(settings)
    require_schema(engine)
    sessions = session_factory(engine)
    upsert_once(sessions, lambda session: sync_bootstrap_key(session, settings.bootstrap_api_key))

    keys = SecretContext.load(settings.secret_context_path)
    # Workers compare their public context with this; one of another key set refuses to run.
    announce_key_set(sessions, keys.fingerprint)
    sealer = PayloadSealer.from_file(settings.queue_key_path)
    signer = TaskSigner.from_file(settings.task_key_path, settings.message_ttl_s)
    gateway = Gateway(settings, sessions, make_celery(settings), keys, sealer, signer)
    app.extensions["veilface"] = gateway
    log.info("gateway ready: key set %s, database %s", keys.fingerprint[:12], engine.dialect.name)

    error_handlers.register(app)
    health.register(app)
    app.register_blueprint(index.blueprint)
    app.register_blueprint(v1.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(console.blueprint)
    app.register_blueprint(compreface.blueprint)
    return app
