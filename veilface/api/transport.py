"""How the gateway talks to the workers: signed Celery tasks carrying sealed images, and their answers.

:class:`TaskTransport` sends, waits and seals; it turns every sign that the broker or the
result backend is unreachable into :class:`~veilface.errors.Unavailable`, so a client gets a
503 and never a trace. :class:`~veilface.api.gateway.Gateway` holds one and keeps the
operations (enroll, identify, verify).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TypeVar

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError

from veilface import errors
from veilface.crypto.sealing import PayloadSealer
from veilface.messaging.app import send_signed
from veilface.messaging.messages import EnrollRequest, ProbeRequest, b64encode, raise_for_error
from veilface.messaging.signing import TaskSigner

log = logging.getLogger(__name__)

#: A request that carries a sealed image: :class:`EnrollRequest` or :class:`ProbeRequest`.
ImageRequest = TypeVar("ImageRequest", EnrollRequest, ProbeRequest)

#: Seconds between two looks at the result backend while waiting for an answer.
POLL_INTERVAL_S = 0.02


class TaskTransport:
    """Signed tasks to the workers' queues and their answers, within ``timeout_s`` each."""

    def __init__(self, celery: Celery, signer: TaskSigner, sealer: PayloadSealer, timeout_s: float):
        self.celery = celery
        self.signer = signer
        self.sealer = sealer
        self.timeout_s = timeout_s

    def expiry(self) -> int:
        """The expiry to write into a request sent now."""
        return self.signer.expiry()

    def sealed(self, request: ImageRequest, image: bytes) -> ImageRequest:
        """``request`` carrying ``image``, sealed under the request's own binding."""
        return replace(request, sealed_image=b64encode(self.sealer.seal(image, request.binding())))

    def call(self, task: str, args: list, queue: str) -> Any:
        """Run a task and wait for it; a backend outage or a timeout becomes ``Unavailable``."""
        return self.wait(self.send(task, args, queue), task)

    def send(self, task: str, args: list, queue: str) -> AsyncResult:
        """Queue a signed task; sending also subscribes to its result, so either backend may be down."""
        with self.unavailable_if_lost("the task broker is unreachable"):
            return send_signed(self.celery, self.signer, task, args, queue)

    def wait(self, result: AsyncResult, task: str) -> Any:
        """The answer to ``result``, a worker's error re-raised; no answer in time is ``Unavailable``."""
        try:
            with self.unavailable_if_lost("the result backend is unreachable"):
                value = result.get(timeout=self.timeout_s, propagate=False, interval=POLL_INTERVAL_S)
        except CeleryTimeout as exc:
            raise errors.Unavailable(f"no worker answered {task} in time") from exc
        finally:
            try:
                result.forget()
            except Exception as exc:  # best effort while the backend is down: results expire anyway
                if not self.backend_lost(exc):
                    raise
        if isinstance(value, BaseException):
            log.warning("task %s failed: %s", task, type(value).__name__)
            raise errors.Unavailable(f"{task} failed in the worker; retry later")
        return raise_for_error(value)

    @contextlib.contextmanager
    def unavailable_if_lost(self, message: str) -> Iterator[None]:
        """Turn an error that means a backend is unreachable (:meth:`backend_lost`) into
        ``Unavailable``; any other error goes on as it is."""
        try:
            yield
        except Exception as exc:
            if not self.backend_lost(exc):
                raise
            raise errors.Unavailable(message) from exc

    def backend_lost(self, exc: Exception) -> bool:
        """Whether ``exc`` says the broker or the result backend is unreachable.

        The Redis result backend's own list of connection errors counts too (it includes
        those of a socket left over from before a restart), and so does the bare
        ``RuntimeError`` with which Celery's result consumer gives up reconnecting, whether
        in ``get()``, ``forget()`` or the subscription ``send_task()`` makes; it reconnects
        on the next call.
        """
        lost = (BrokerError, RedisError, ConnectionError, OSError)
        lost += tuple(getattr(self.celery.backend, "connection_errors", ()))
        cause = exc.__cause__ if isinstance(exc, RuntimeError) else exc
        return isinstance(cause, lost)
