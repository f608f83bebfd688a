"""Every failure leaves the gateway as ``{"error": {"code", "message"}}``, never a trace."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from flask.json.provider import DefaultJSONProvider
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from veilface import errors

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


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


def error_response(exc: errors.VeilfaceError):
    response = jsonify({"error": {"code": exc.code, "message": exc.message}})
    response.status_code = exc.status
    if exc.status in (429, 503):
        response.headers["Retry-After"] = str(getattr(exc, "retry_after", RETRY_AFTER_S))
    return response


def register(app: Flask) -> None:
    app.register_error_handler(errors.VeilfaceError, error_response)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc):
        return error_response(errors.ImageTooLarge("the upload exceeds the size limit"))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.code, "bad_request")
        response = jsonify({"error": {"code": code, "message": exc.description}})
        response.status_code = exc.code or 400
        return response

    @app.errorhandler(DBAPIError)
    @app.errorhandler(BrokerError)
    @app.errorhandler(RedisConnectionError)
    def _backend_down(exc):
        log.warning("backend unavailable: %s", type(exc).__name__)
        return error_response(errors.Unavailable("a backend is unavailable; retry later"))

    @app.errorhandler(Exception)
    def _unexpected(exc):
        log.exception("unexpected error")
        return error_response(errors.VeilfaceError("internal error"))
