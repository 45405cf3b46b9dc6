"""Who may do what on the hub: ``Authorization: Bearer <token>`` checked against the registry's tokens.

Writes (push, tag, delete, metrics, verify) need a token with the ``write`` scope. Reads are open
unless the app is configured with ``READ_TOKEN_REQUIRED``; while reads are open a token the hub does
not know is ignored on reads (the Hugging Face client may send a huggingface.co token along), but
it is refused wherever a token is required. Missing or unknown credentials answer 401 with
``WWW-Authenticate: Bearer``; a known token without the needed scope answers 403.
"""

from __future__ import annotations

from flask import Flask, current_app, request

from adapterhub.errors import AuthError, PermissionDenied
from adapterhub.tokens import READ, WRITE, TokenRecord, TokenStore

from .api_keys import bearer as _bearer
from .state import app_state

__all__ = ["init_app", "authorize", "check_credentials", "READ", "WRITE", "READ_TOKEN_REQUIRED"]

READ_TOKEN_REQUIRED = "READ_TOKEN_REQUIRED"


def init_app(app: Flask) -> None:
    """Attach the registry's token store (read from ``tokens.json`` beside its index)."""
    ext = app_state(app)
    ext["tokens"] = TokenStore(ext["registry"].root)


def check_credentials(
    store: TokenStore, authorization: str | None, scope: str, *, required: bool
) -> TokenRecord | None:
    """The token record an ``Authorization`` header value stands for, checked for ``scope``.

    Flask-free, so the server's header gate applies the same rule before a body is read; raises
    ``AuthError`` (401) or ``PermissionDenied`` (403) where a token is ``required`` and falls short.
    """
    token = _bearer(authorization)
    record = store.authenticate(token) if token is not None else None
    if not required:
        return record
    if token is None:
        raise AuthError(
            f"this hub needs a token with {scope} scope: send 'Authorization: Bearer <token>' "
            "(adapterhub: --token or $ADAPTERHUB_TOKEN)"
        )
    if record is None:
        raise AuthError("the token is not valid on this hub (unknown or revoked)")
    if not record.allows(scope):
        raise PermissionDenied(f"token {record.id} has {record.scope} scope; this operation needs {scope}")
    return record


def authorize(scope: str) -> TokenRecord | None:
    """Check the request may act with ``scope``; raise ``AuthError`` (401) or ``PermissionDenied`` (403) otherwise."""
    required = scope == WRITE or bool(current_app.config.get(READ_TOKEN_REQUIRED))
    return check_credentials(app_state()["tokens"], request.headers.get("Authorization"), scope, required=required)
