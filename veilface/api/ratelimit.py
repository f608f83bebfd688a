"""Per-API-key request limits (fixed one-minute windows) answered with 429."""

from __future__ import annotations

import threading
import time

from veilface import errors


class RateLimiter:
    """Allows ``per_minute`` requests per key and window in this gateway process (0: no limit)."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._window = 0
        self._counts: dict[int, int] = {}

    def check(self, key_id: int) -> None:
        if self.per_minute <= 0:
            return
        window = int(time.monotonic() // 60)
        with self._lock:
            if window != self._window:
                self._window, self._counts = window, {}
            count = self._counts.get(key_id, 0) + 1
            self._counts[key_id] = count
        if count > self.per_minute:
            raise errors.RateLimited(f"more than {self.per_minute} requests per minute for this API key")
