"""The HTTP API of client-key galleries (``/v1/galleries/{g}``...), as a thin ``requests`` wrapper.

Every method returns the decoded JSON answer; an error answer raises :class:`ServerError` with
the server's stable code and message (``{"error": {"code", "message"}}``), so the command line
prints one line.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from veilface.errors import VeilfaceError


class ServerError(VeilfaceError):
    """The server refused the request or could not be reached."""

    code, status = "server_error", 502

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code or self.code
        self.status = status or self.status


def _error(response: requests.Response) -> ServerError:
    """The :class:`ServerError` of an error answer, from its JSON body when it has one."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = (
            "http_error",
            response.text.strip().splitlines()[0][:200] if response.text.strip() else "",
        )
    return ServerError(
        f"server answered {response.status_code} {code}: {message}", code=code, status=response.status_code
    )


def _segment(name: str) -> str:
    return quote(name, safe="")


class GalleryApi:
    """The five endpoints of client-key galleries on the gateway at ``url``, with one API key."""

    def __init__(
        self, url: str, api_key: str, *, timeout_s: float = 120.0, session: requests.Session | None = None
    ):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.session.headers["X-API-Key"] = api_key

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.session.request(method, f"{self.url}{path}", timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise ServerError(f"cannot reach {self.url}: {type(exc).__name__}") from None
        if not response.ok:
            raise _error(response)
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{method} {path}: the answer is not JSON") from None

    def create_gallery(self, gallery: str, public_context: bytes) -> dict[str, Any]:
        """Create a client-key gallery under the serialized public context (no secret key)."""
        return self._call(
            "PUT",
            f"/v1/galleries/{_segment(gallery)}/client-keys",
            data=public_context,
            headers={"Content-Type": "application/octet-stream"},
        )

    def gallery(self, gallery: str) -> dict[str, Any]:
        """The gallery: its key mode and fingerprint, model version, dimension, threshold and model."""
        return self._call("GET", f"/v1/galleries/{_segment(gallery)}")

    def reserve_slots(self, gallery: str, count: int) -> dict[str, Any]:
        """Reserve ``count`` (1..64) template positions: ``{"model_version", "dim", "slots"}``."""
        return self._call("POST", f"/v1/galleries/{_segment(gallery)}/slots", json={"count": count})

    def add_templates(self, gallery: str, subject: str, templates: list[dict[str, Any]]) -> dict[str, Any]:
        """Store encrypted templates ``{"block", "slot", "ciphertext"}`` of ``subject``."""
        path = f"/v1/galleries/{_segment(gallery)}/subjects/{_segment(subject)}/templates"
        return self._call("POST", path, json={"templates": templates})

    def search(self, gallery: str, probes: list[str], subject: str | None = None) -> dict[str, Any]:
        """Score encrypted probes against the gallery (or one ``subject``): encrypted scores back."""
        body: dict[str, Any] = {"probes": probes}
        if subject is not None:
            body["subject"] = subject
        return self._call("POST", f"/v1/galleries/{_segment(gallery)}/search", json=body)
