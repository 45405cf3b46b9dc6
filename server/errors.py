"""HTTP errors: one exception type, one table mapping hub errors to status codes, one JSON shape.

Every error leaves the server as ``{"error": {"message", "type", "code"}}`` (the OpenAI shape, which
the registry API shares), so clients parse one format and no client input can produce a 500 page.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from adapterhub import errors as hub_errors

__all__ = ["ApiError", "install_error_handlers", "STATUS_FOR"]


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


# Most specific first: the first matching class decides the status.
STATUS_FOR: list[tuple[type[BaseException], int, str]] = [
    (hub_errors.AuthError, 401, "unauthorized"),
    (hub_errors.PermissionDenied, 403, "forbidden"),
    (hub_errors.AdapterNotFound, 404, "not_found"),
    (hub_errors.ObjectMissing, 404, "object_missing"),
    (hub_errors.IncompatibleBase, 409, "incompatible_base"),
    (hub_errors.DigestMismatch, 400, "digest_mismatch"),
    (hub_errors.ConcurrentModification, 503, "busy"),
    (hub_errors.AdapterBusy, 503, "adapter_busy"),
    (hub_errors.RegistryCorrupt, 500, "registry_corrupt"),
    (hub_errors.AdapterHubError, 400, "invalid_request"),
]


def _response(err: ApiError):
    resp = jsonify(err.to_dict())
    resp.status_code = err.status
    for k, v in err.headers.items():
        resp.headers[k] = v
    return resp


def install_error_handlers(app: Flask) -> None:
    """App-level handlers (blueprint handlers never see 404/405 for unknown URLs)."""

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError):
        return _response(e)

    @app.errorhandler(hub_errors.AdapterHubError)
    def _hub_error(e: hub_errors.AdapterHubError):
        for cls, status, code in STATUS_FOR:
            if isinstance(e, cls):
                return _response(ApiError(status, str(e), code=code))
        return _response(ApiError(400, str(e), code="invalid_request"))

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        return _response(ApiError(e.code or 500, e.description or e.name, code=e.name.lower().replace(" ", "_")))

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        app.logger.exception("unhandled error")
        return _response(ApiError(500, f"internal error: {type(e).__name__}", code="internal_error"))
