"""HTTP errors: one exception type for the HTTP layer's own refusals, one JSON shape for all.

Every error leaves the server as ``{"error": {"message", "type", "code"}}`` (the OpenAI shape, which
the registry API shares), so clients parse one format and no client input can produce a 500 page.
Its status, code and type are one row of ``adapterhub.error_codes``, the table the clients read
back: a view names the row (``ApiError(error_codes.NOT_LOADED, message)``), a hub error answers
with its class's row (``adapterhub.errors.ERROR_TABLE``), werkzeug's own refusals with the row of
their reason (``http_error_row``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from adapterhub import error_codes as codes
from adapterhub.error_codes import WireCode
from adapterhub.errors import AdapterHubError, disk_full, wire_code

__all__ = ["ApiError", "install_error_handlers"]


class ApiError(Exception):
    """An error a view raises on purpose: a row of the error table and a message for a person.

    ``status``, ``code`` and ``type`` are the row's, so no raising site writes a status or a code
    of its own; ``headers`` are added to the answer (``Retry-After``, ``X-Error-Code``, ...).
    """

    def __init__(self, row: WireCode, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = row.http_status
        self.message = message
        self.code = row.code
        self.type = row.type
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
        return _response(ApiError(wire_code(e), str(e)))

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        row = codes.http_error_row(e.name.lower().replace(" ", "_"), e.code or 500)
        return _response(ApiError(row, e.description or e.name))

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        full = disk_full(e)
        if full is not None:  # no room is the hub's state, not a bug: a 507, without a traceback
            app.logger.error("the registry's disk is full: %s", e)
            return _hub_error(full)
        app.logger.exception("unhandled error")
        return _response(ApiError(codes.INTERNAL_ERROR, f"internal error: {type(e).__name__}"))
