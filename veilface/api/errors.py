"""Every failure leaves the gateway as ``{"error": {"code", "message"}}``, never a trace."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from flask.json.provider import DefaultJSONProvider
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from veilface import errors

log = logging.getLogger(__name__)

#: Seconds a 429 or 503 asks the client to wait when the error names no time of its own.
RETRY_AFTER_S = 5

#: Exceptions that say a backend (database, broker or result store) is unreachable.
BACKEND_DOWN: tuple[type[Exception], ...] = (DBAPIError, BrokerError, RedisConnectionError)

#: The Veilface error of an HTTP error Flask raises itself; any other status is a ``bad_request``.
_HTTP_ERRORS: dict[int | None, type[errors.VeilfaceError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
}


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, with keys in the order written and a body nested too deeply refused as a 400.

    Python's decoder recurses once per level: ``"[" * 100000`` exhausts the stack, and the
    ``RecursionError`` would escape even ``get_json(silent=True)``.
    """

    sort_keys = False

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            log.warning("refused a JSON body nested too deeply")
            raise errors.BadRequest("the JSON body is nested too deeply") from None


def retry_after(exc: Exception) -> int:
    """The seconds a 429 or 503 for ``exc`` asks the client to wait."""
    return getattr(exc, "retry_after", RETRY_AFTER_S)


def json_error(body: dict, status: int, retry_after_s: int = RETRY_AFTER_S) -> Response:
    """An error ``body`` with its ``status``; a 429 or 503 also says when to retry (``Retry-After``)."""
    response = jsonify(body)
    response.status_code = status
    if status in (429, 503):
        response.headers["Retry-After"] = str(retry_after_s)
    return response


def backend_down(exc: Exception) -> errors.Unavailable:
    """What the client is told when ``exc`` (one of :data:`BACKEND_DOWN`) escaped a view."""
    log.warning("backend unavailable: %s", type(exc).__name__)
    return errors.Unavailable("a backend is unavailable; retry later")


def error_response(exc: errors.VeilfaceError) -> Response:
    """The ``{"error": {"code", "message"}}`` response of a Veilface error."""
    return json_error({"error": {"code": exc.code, "message": exc.message}}, exc.status, retry_after(exc))


def register(app: Flask) -> None:
    """Install the handlers that turn every failure into a JSON error body."""
    app.register_error_handler(errors.VeilfaceError, error_response)
    for backend_error in BACKEND_DOWN:
        app.register_error_handler(backend_error, lambda exc: error_response(backend_down(exc)))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc):
        return error_response(errors.ImageTooLarge("the upload exceeds the size limit"))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = _HTTP_ERRORS.get(exc.code, errors.BadRequest).code
        response = jsonify({"error": {"code": code, "message": exc.description}})
        response.status_code = exc.code or 400
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc):
        log.exception("unexpected error")
        return error_response(errors.VeilfaceError("internal error"))
