"""Per-API-key request limits (fixed one-minute windows) answered with 429.

With Redis as the broker the count of a window lives there (``INCR`` + ``EXPIRE``), so the
limit holds across every gunicorn worker process and every gateway host; otherwise, or
while Redis cannot be reached, each process counts for itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import redis

from veilface import errors

log = logging.getLogger(__name__)

WINDOW_S = 60
_PREFIX = "veilface:ratelimit"


class RateLimiter:
    """Allows ``per_minute`` requests per key and window (0: no limit).

    ``broker_url``: a ``redis://`` URL shares the counts between processes; any other value
    (the embedded queue) keeps them in this process.
    """

    def __init__(self, per_minute: int, broker_url: str | None = None):
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._window = 0
        self._counts: dict[int, int] = {}
        self._redis = None
        if per_minute > 0 and broker_url and broker_url.startswith(("redis://", "rediss://")):
            self._redis = redis.Redis.from_url(broker_url, socket_timeout=1.0, socket_connect_timeout=1.0)

    def check(self, key_id: int) -> None:
        """Count one request of ``key_id``; raise :class:`RateLimited` past the limit."""
        if self.per_minute <= 0:
            return
        now = time.time()
        window = int(now // WINDOW_S)
        count = self._shared_count(key_id, window)
        if count is None:
            count = self._local_count(key_id, window)
        if count > self.per_minute:
            exc = errors.RateLimited(f"more than {self.per_minute} requests per minute for this API key")
            exc.retry_after = max(1, math.ceil((window + 1) * WINDOW_S - now))
            raise exc

    def _shared_count(self, key_id: int, window: int) -> int | None:
        if self._redis is None:
            return None
        key = f"{_PREFIX}:{key_id}:{window}"
        try:
            with self._redis.pipeline() as pipe:
                count, _ = pipe.incr(key).expire(key, 2 * WINDOW_S).execute()
            return int(count)
        except redis.RedisError as exc:
            log.warning("rate limit counted in this process: Redis unavailable (%s)", type(exc).__name__)
            return None

    def _local_count(self, key_id: int, window: int) -> int:
        with self._lock:
            if window != self._window:
                self._window, self._counts = window, {}
            count = self._counts.get(key_id, 0) + 1
            self._counts[key_id] = count
        return count
