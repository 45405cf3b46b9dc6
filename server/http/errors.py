"""HTTP errors: one exception type for the HTTP layer's own refusals, one JSON shape for all.

Every error leaves the server as ``{"error": {"message", "type", "code"}}`` (the OpenAI shape, which
the registry API shares), so clients parse one format and no client input can produce a 500 page.
Hub errors are answered with their row of ``adapterhub.errors.ERROR_TABLE``, the table the remote
client reads back.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from adapterhub.errors import AdapterHubError, disk_full, wire_code

__all__ = ["ApiError", "install_error_handlers"]


class ApiError(Exception):
    """An error a view raises on purpose, with its HTTP status and a machine-readable code."""

    def __init__(self, status: int, message: str, *, code: str | None = None, type_: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


# A 401 must say how to authenticate (RFC 9110 section 11.6.1).
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="adapterhub"'}


def _response(err: ApiError):
    resp = jsonify(err.to_dict())
    resp.status_code = err.status
    for k, v in ((_CHALLENGE if err.status == 401 else {}) | err.headers).items():
        resp.headers[k] = v
    return resp


def install_error_handlers(app: Flask) -> None:
    """App-level handlers (blueprint handlers never see 404/405 for unknown URLs)."""

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError):
        return _response(e)

    @app.errorhandler(AdapterHubError)
    def _hub_error(e: AdapterHubError):
        wire = wire_code(e)
        return _response(ApiError(wire.http_status, str(e), code=wire.code))

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        return _response(ApiError(e.code or 500, e.description or e.name, code=e.name.lower().replace(" ", "_")))

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        full = disk_full(e)
        if full is not None:  # no room is the hub's state, not a bug: a 507, without a traceback
            app.logger.error("the registry's disk is full: %s", e)
            return _hub_error(full)
        app.logger.exception("unhandled error")
        return _response(ApiError(500, f"internal error: {type(e).__name__}", code="internal_error"))
