"""gunicorn settings for the gateway; every value can be overridden by GUNICORN_CMD_ARGS."""

import os
import sys

from veilface.config import SettingError, check_secrets, load_settings

bind = os.environ.get("VEILFACE_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("VEILFACE_GATEWAY_WORKERS", "2"))
threads = int(os.environ.get("VEILFACE_GATEWAY_THREADS", "4"))
worker_class = "gthread"
timeout = 120
graceful_timeout = 20
accesslog = "-"
# Request bodies (face photos) are never logged; only the request line and status.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


def on_starting(server) -> None:
    """Refuse to start, in one line and before any worker boots, on a secret setting too short."""
    try:
        check_secrets(load_settings())
    except SettingError as exc:
        sys.exit(f"veilface gateway refuses to start: {exc}")
