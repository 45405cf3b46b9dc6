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

from .state import app_state

__all__ = ["init_app", "authorize", "READ", "WRITE", "READ_TOKEN_REQUIRED"]

READ_TOKEN_REQUIRED = "READ_TOKEN_REQUIRED"


def init_app(app: Flask) -> None:
    """Attach the registry's token store (read from ``tokens.json`` beside its index)."""
    ext = app_state(app)
    ext["tokens"] = TokenStore(ext["registry"].root)


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authorize(scope: str) -> TokenRecord | None:
    """Check the request may act with ``scope``; raise ``AuthError`` (401) or ``PermissionDenied`` (403) otherwise."""
    store: TokenStore = app_state()["tokens"]
    token = _presented_token()
    required = scope == WRITE or bool(current_app.config.get(READ_TOKEN_REQUIRED))
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
