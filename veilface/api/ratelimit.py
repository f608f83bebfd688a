"""Request limits over fixed one-minute windows, answered with 429 and ``Retry-After``.

With Redis as the broker the count of a window lives there (``INCR`` + ``EXPIRE``), so a
limit holds across every gunicorn worker process and every gateway host; otherwise, or
while Redis cannot be reached, each process counts for itself.

Three limits use it (:class:`Limits`): requests per read or eval API key, verifications
per subject, and failed authentications per client address.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import redis

from veilface import errors
from veilface.config import Settings

log = logging.getLogger(__name__)

WINDOW_S = 60
_PREFIX = "veilface:ratelimit"


class RateLimiter:
    """Allows ``per_minute`` events per bucket and window (0: no limit).

    ``name`` keeps the buckets of different limiters apart; ``broker_url``: a ``redis://`` URL
    shares the counts between processes; any other value (the embedded queue) keeps them in
    this process.
    """

    def __init__(self, per_minute: int, broker_url: str | None = None, *, name: str = "key"):
        self.per_minute = per_minute
        self.name = name
        self._lock = threading.Lock()
        self._window = 0
        self._counts: dict[str, int] = {}
        self._redis = None
        if per_minute > 0 and broker_url and broker_url.startswith(("redis://", "rediss://")):
            self._redis = redis.Redis.from_url(broker_url, socket_timeout=1.0, socket_connect_timeout=1.0)

    def check(self, bucket: str | int, message: str) -> None:
        """Count one event of ``bucket``; raise :class:`RateLimited` with ``message`` past the limit."""
        if self.per_minute > 0 and self.count(bucket) > self.per_minute:
            raise self._refusal(message)

    def refuse_if_spent(self, bucket: str | int, message: str) -> None:
        """Raise :class:`RateLimited` if ``bucket`` used its whole allowance; counts nothing."""
        if self.per_minute > 0 and self._current(bucket) >= self.per_minute:
            raise self._refusal(message)

    def count(self, bucket: str | int) -> int:
        """Count one event of ``bucket``; returns the events of this window so far (0: no limit)."""
        if self.per_minute <= 0:
            return 0
        window = int(time.time() // WINDOW_S)
        shared = self._shared(self._key(bucket, window), increment=True)
        return self._local(bucket, window, increment=True) if shared is None else shared

    def _current(self, bucket: str | int) -> int:
        window = int(time.time() // WINDOW_S)
        shared = self._shared(self._key(bucket, window), increment=False)
        return self._local(bucket, window, increment=False) if shared is None else shared

    def _refusal(self, message: str) -> errors.RateLimited:
        exc = errors.RateLimited(message)
        now = time.time()
        exc.retry_after = max(1, math.ceil((int(now // WINDOW_S) + 1) * WINDOW_S - now))
        return exc

    def _key(self, bucket: str | int, window: int) -> str:
        return f"{_PREFIX}:{self.name}:{bucket}:{window}"

    def _shared(self, key: str, *, increment: bool) -> int | None:
        if self._redis is None:
            return None
        try:
            if not increment:
                return int(self._redis.get(key) or 0)
            with self._redis.pipeline() as pipe:
                count, _ = pipe.incr(key).expire(key, 2 * WINDOW_S).execute()
            return int(count)
        except redis.RedisError as exc:
            log.warning("rate limit counted in this process: Redis unavailable (%s)", type(exc).__name__)
            return None

    def _local(self, bucket: str | int, window: int, *, increment: bool) -> int:
        key = str(bucket)
        with self._lock:
            if window != self._window:
                self._window, self._counts = window, {}
            count = self._counts.get(key, 0) + (1 if increment else 0)
            if increment:
                self._counts[key] = count
        return count


@dataclass(frozen=True)
class Limits:
    """The gateway's request limits, from :class:`~veilface.config.Settings`."""

    #: Requests per read- or eval-scope API key (admin keys are not limited).
    per_key: RateLimiter
    #: Verifications against one subject (``gallery/subject``), read and eval keys together.
    per_subject: RateLimiter
    #: Failed authentications per client address.
    auth_failures: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        broker = settings.celery_broker_url
        return cls(
            per_key=RateLimiter(settings.rate_limit_per_minute, broker, name="key"),
            per_subject=RateLimiter(settings.subject_verify_per_minute, broker, name="subject"),
            auth_failures=RateLimiter(settings.auth_failures_per_minute, broker, name="auth"),
        )
