"""The real gateway app in-process, with no worker: what the in-process API tests share.

``create_app(settings, gateway)`` runs on a real :class:`~veilface.api.gateway.Gateway`
whose :class:`~veilface.api.transport.TaskTransport` answers from a script instead of a
Celery worker; everything else (authentication, limits, parsing, the store, error bodies,
the OpenAPI document) is the production code. Fast: no process is started.
"""

from __future__ import annotations

import io
from typing import Any

from flask import Flask

from veilface.api import create_app
from veilface.api.gateway import Gateway
from veilface.api.transport import TaskTransport
from veilface.config import Settings
from veilface.crypto.sealing import PayloadSealer
from veilface.crypto.secret import SecretContext
from veilface.messaging.app import make_celery
from veilface.messaging.signing import TaskSigner
from veilface.store.apikeys import create_api_key
from veilface.store.db import create_schema, make_engine, session_factory

ADMIN_KEY = "api-v1-admin-" + "a" * 24


class ScriptedTransport(TaskTransport):
    """Signs and seals for real; ``call`` answers each task from ``answers`` (an exception is raised)."""

    def __init__(self, settings: Settings):
        super().__init__(
            make_celery(settings),
            TaskSigner.from_file(settings.task_key_path, settings.message_ttl_s),
            PayloadSealer.from_file(settings.queue_key_path),
            settings.task_timeout_s,
        )
        self.answers: dict[str, Any] = {}
        self.sent: list[tuple[str, list, str]] = []

    def call(self, task: str, args: list, queue: str) -> Any:
        self.sent.append((task, args, queue))
        answer = self.answers[task]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Api:
    """The app, its scripted transport and a client that returns ``(status, JSON body, headers)``."""

    def __init__(self, app: Flask, transport: ScriptedTransport):
        self.app, self.transport, self.client = app, transport, app.test_client()

    @property
    def gateway(self) -> Gateway:
        return self.app.extensions["veilface"]

    def key(self, scope: str, **kwargs) -> str:
        with self.gateway.session() as session:
            return create_api_key(session, f"api-v1-{scope}-{len(kwargs)}", scope, **kwargs)

    def __call__(self, method: str, path: str, key: str | None = ADMIN_KEY, files=None, **kwargs):
        headers = {"X-API-Key": key} if key else {}
        if files:
            kwargs["data"] = {field: (io.BytesIO(body), "x.jpg") for field, body in files.items()}
        response = self.client.open(path, method=method, headers=headers, **kwargs)
        assert "Traceback" not in response.get_data(as_text=True)
        return response.status_code, response.get_json(), response.headers


def build_api(settings: Settings) -> Api:
    """The app over ``settings``' database (schema created) and a scripted transport."""
    engine = make_engine(settings)
    create_schema(engine)
    transport = ScriptedTransport(settings)
    keys = SecretContext.load(settings.secret_context_path)
    gateway = Gateway(settings, session_factory(engine), keys, transport)
    return Api(create_app(settings, gateway), transport)


def code(result: tuple) -> tuple[int, str]:
    """``(status, error code)`` of an :class:`Api` call's result."""
    status, body, _ = result
    return status, body["error"]["code"]
