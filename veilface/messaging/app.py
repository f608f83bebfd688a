"""The Celery application, defined once and shared by the gateway and every worker."""

from __future__ import annotations

import sqlite3

from celery import Celery
from celery.result import AsyncResult
from kombu.transport import sqlalchemy as sqla_transport
from kombu.utils.uuid import uuid

from veilface.config import Settings, load_settings
from veilface.messaging.messages import EMBED_QUEUE, MATCH_QUEUE
from veilface.messaging.signing import SIGNATURE_HEADER, TaskSigner

#: Poll period of the embedded SQLite queue, in seconds.
SQLA_POLL_S = 0.05
_SQLA_PREFIX = "sqla+"


class SecureDeleteConnection(sqlite3.Connection):
    """A SQLite connection that overwrites deleted rows instead of leaving them in free pages
    (``PRAGMA secure_delete``, off by default in SQLite's own builds)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA secure_delete=ON")


#: Engine options of the embedded queue and result store (both SQLite files).
_SQLITE_ENGINE_OPTIONS = {"connect_args": {"factory": SecureDeleteConnection}}


class _DeletingChannel(sqla_transport.Channel):
    """kombu's SQLAlchemy channel, except that a delivered message is deleted.

    kombu keeps every delivered row, hidden (``visible`` false) and never read again: in the
    embedded queue that is every sealed image and probe ever sent. Here the rows delivered
    from a queue are deleted right after delivery (kombu restores an unacknowledged message by
    sending it again, not from its old row).
    """

    def _get(self, queue):
        payload = super()._get(queue)
        delivered = self._query_all(queue).filter(self.message_cls.visible.is_(False))
        delivered.delete(synchronize_session=False)
        self.session.commit()
        return payload


class EmbeddedTransport(sqla_transport.Transport):
    """The embedded queue: kombu's SQLAlchemy transport, polled every :data:`SQLA_POLL_S`,
    keeping no delivered message."""

    Channel = _DeletingChannel
    polling_interval = SQLA_POLL_S


def celery_config(settings: Settings) -> dict:
    """Celery configuration for ``settings``: Redis in production, a SQLite-backed transport by
    default.

    Tasks are acknowledged late and rejected when their worker dies, so a task lost with
    a killed worker is delivered again; results expire quickly and carry no plaintext.
    Remote control is off: no broker message can stop, reconfigure or inspect a worker.
    """
    broker = settings.celery_broker_url
    conf: dict = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": EMBED_QUEUE,
        "task_routes": {
            "veilface.embed.*": {"queue": EMBED_QUEUE},
            "veilface.match.*": {"queue": MATCH_QUEUE},
        },
        "result_expires": 600,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_enable_remote_control": False,
    }
    if broker.startswith(_SQLA_PREFIX):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        # kombu takes a transport named in the URL from its own aliases only; the class is given
        # explicitly, with the bare SQLAlchemy URL (kombu hands every transport option of this
        # transport to create_engine(), so the poll period is set on the class).
        broker = broker.removeprefix(_SQLA_PREFIX)
        conf["broker_transport"] = f"{__name__}:EmbeddedTransport"
        conf["broker_transport_options"] = _SQLITE_ENGINE_OPTIONS
    else:
        # Redelivery of a task whose worker died without acknowledging it: after the visibility
        # timeout, found by a sweep every tenth of it (kombu's default sweeps only every tenth
        # tick, which adds up to 100 s).
        visibility = settings.broker_visibility_timeout_s
        conf["broker_transport_options"] = {
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1, min(10, round(visibility / 10))),
            "unacked_restore_throttle": 1,
        }
        conf["result_backend_transport_options"] = {"retry_policy": {"timeout": 5.0}}
    if settings.celery_result_backend.startswith("db+sqlite"):
        conf["database_engine_options"] = _SQLITE_ENGINE_OPTIONS
    conf["broker_url"] = broker
    conf["result_backend"] = settings.celery_result_backend
    return conf


def make_celery(settings: Settings) -> Celery:
    """Celery app configured for ``settings`` (:func:`celery_config`) now: the gateway's client."""
    app = Celery("veilface")
    app.conf.update(celery_config(settings))
    return app


def lazy_celery() -> Celery:
    """Celery app configured from the environment on its first use, not when it is created.

    A worker module declares its tasks on one at import time without reading a setting or
    creating a folder; ``celery worker`` (or a task's first call) configures it then.
    """
    app = Celery("veilface")
    app.add_defaults(lambda: celery_config(load_settings()))
    return app


def send_signed(celery: Celery, signer: TaskSigner, task: str, args: list, queue: str) -> AsyncResult:
    """Queue ``task`` signed (:mod:`veilface.messaging.signing`); a worker runs nothing unsigned."""
    task_id = uuid()
    headers = {SIGNATURE_HEADER: signer.sign(task, task_id, args)}
    return celery.send_task(task, args=args, queue=queue, task_id=task_id, headers=headers)
