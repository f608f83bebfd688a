"""Task messages signed by the gateway, verified by every worker before it does anything.

Whoever can write to the broker (Redis, or the embedded queue's SQLite file) can queue any
message. The gateway therefore signs each task it sends with HMAC-SHA256 under ``task.key``
(held by the gateway, the embedders and the he-matchers): the signature covers the task
name, the task id, its arguments and an expiry, and travels in a message header. A worker
refuses a message that is unsigned, altered, expired, or signed for another task name.

A message copied within its lifetime runs again with the same arguments and the same task id:
an enrollment is idempotent per image, and the result goes under the original task id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from veilface import errors
from veilface.crypto.keyfiles import read_key

#: Message header that carries ``{"expires": unix_seconds, "mac": hex}``.
SIGNATURE_HEADER = "veilface_signature"


def _signed_bytes(task: str, task_id: str, args: Any, kwargs: Any, expires: int) -> bytes:
    """One canonical JSON text of everything the signature covers (tuples read as lists)."""
    fields = {"task": task, "id": task_id, "args": args, "kwargs": kwargs or {}, "expires": expires}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


class TaskSigner:
    """Signs task messages (gateway) and verifies them (workers) with the deployment's task key."""

    def __init__(self, key: bytes, ttl_s: float):
        self._key = key
        self.ttl_s = ttl_s

    @classmethod
    def from_file(cls, path: Path, ttl_s: float) -> TaskSigner:
        return cls(read_key(path), ttl_s)

    def expiry(self, now: float | None = None) -> int:
        """The expiry of a message sent ``now``: Unix seconds, ``ttl_s`` ahead."""
        return int((time.time() if now is None else now) + self.ttl_s)

    def _mac(self, task: str, task_id: str, args: Any, kwargs: Any, expires: int) -> str:
        message = _signed_bytes(task, task_id, args, kwargs, expires)
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(
        self, task: str, task_id: str, args: list, kwargs: dict | None = None, *, now: float | None = None
    ) -> dict[str, Any]:
        """The :data:`SIGNATURE_HEADER` value for this message, valid for ``ttl_s`` from ``now``."""
        expires = self.expiry(now)
        return {"expires": expires, "mac": self._mac(task, task_id, args, kwargs, expires)}

    def verify(
        self, task: str, task_id: str, args: Any, kwargs: Any, signature: object, *, now: float | None = None
    ) -> None:
        """Raise ``MessageRefused`` unless ``signature`` signs exactly this message and is current.

        ``task`` is the name of the task the worker is about to run, never one read from the
        message: a signature made for another task does not verify.
        """
        if not isinstance(signature, dict) or not isinstance(signature.get("mac"), str):
            raise errors.MessageRefused("unsigned task message")
        expires = signature.get("expires")
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise errors.MessageRefused("unsigned task message")
        expected = self._mac(task, task_id, args, kwargs, expires)
        if not hmac.compare_digest(expected, signature["mac"]):
            raise errors.MessageRefused("the task message signature does not verify")
        if expires < (time.time() if now is None else now):
            raise errors.MessageRefused("the task message expired")
