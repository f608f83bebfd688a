"""The Celery application, defined once and shared by the gateway and every worker."""

from __future__ import annotations

from celery import Celery
from kombu.transport import sqlalchemy as sqla_transport

from veilface.config import Settings
from veilface.schemas import EMBED_QUEUE, MATCH_QUEUE

#: Poll period of the embedded SQLite queue, in seconds.
SQLA_POLL_S = 0.05


def make_celery(settings: Settings) -> Celery:
    """Celery app for ``settings``: Redis in production, a SQLite-backed transport by default.

    Tasks are acknowledged late and rejected when their worker dies, so a task lost with
    a killed worker is delivered again; results expire quickly and carry no plaintext.
    """
    app = Celery("veilface", broker=settings.celery_broker_url, backend=settings.celery_result_backend)
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
    }
    if settings.celery_broker_url.startswith("sqla+"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        # kombu hands every transport option of this transport to create_engine(), so the
        # poll period (1 s by default: a second per hop) is set on the transport class.
        sqla_transport.Transport.polling_interval = SQLA_POLL_S
        conf["worker_enable_remote_control"] = False
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
    app.conf.update(conf)
    return app
