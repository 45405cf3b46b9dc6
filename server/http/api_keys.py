"""Who may use the serving port: ``Authorization: Bearer <key>`` against the keys ``adapterhub serve`` was given.

As in vLLM, one flag closes the OpenAI API: with API keys set every ``/v1`` route (known or not)
answers 401 without one of them. Admin keys are separate: with any set, loading and unloading
adapters (which evict other tenants' adapters and cost load time) need an admin key, and an API key
there answers 403; an admin key may also generate. Without admin keys, load and unload follow the
API keys. ``/health`` stays open for load balancers; ``/metrics`` is open unless
``metrics_need_key``. The hub routes (``--with-hub``) keep the hub's own token rules (``auth``).

The check runs twice from the same headers: in the server as soon as the headers are in (a header
gate, ``header_gate``: a request without a valid key gets none of its body read) and in the app,
which answers it. Keys are kept only as SHA-256 digests and compared with ``hmac.compare_digest`` against every key
(so neither the time taken nor a length difference tells a caller how close a guess was); no
message, log line or metric ever carries one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Iterable

from flask import Flask, request

from adapterhub import error_codes as codes

from .errors import ApiError
from .header_gate import add_gate

__all__ = ["ServingKeys", "install", "keys_from_env", "API_KEY_ENV", "ADMIN_API_KEY_ENV", "bearer"]

API_KEY_ENV = "ADAPTERHUB_API_KEY"
ADMIN_API_KEY_ENV = "ADAPTERHUB_ADMIN_API_KEY"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _matches(presented: bytes, digests: tuple[bytes, ...]) -> bool:
    found = False
    for d in digests:  # no early exit: every key is compared
        found |= hmac.compare_digest(presented, d)
    return found


def _clean(keys: Iterable[str], what: str) -> tuple[str, ...]:
    out = []
    for key in keys:
        key = key.strip()
        if not key or any(c.isspace() or not c.isprintable() for c in key):
            raise ValueError(f"an {what} must be non-empty printable text without spaces")
        out.append(key)
    return tuple(out)


@dataclass(frozen=True)
class ServingKeys:
    """Digests of the API and admin keys; empty tuples leave that part open."""

    api: tuple[bytes, ...] = ()
    admin: tuple[bytes, ...] = ()
    metrics_need_key: bool = False

    @classmethod
    def of(cls, api_keys: Iterable[str] = (), admin_keys: Iterable[str] = (), *,
           metrics_need_key: bool = False) -> ServingKeys:
        """Raises ``ValueError`` for an empty key or one with spaces or control characters."""
        api = tuple(_digest(k) for k in _clean(api_keys, "API key"))
        admin = tuple(_digest(k) for k in _clean(admin_keys, "admin API key"))
        if metrics_need_key and not (api or admin):
            raise ValueError("metrics behind a key needs an API key (--api-key)")
        return cls(api, admin, metrics_need_key)

    @property
    def enabled(self) -> bool:
        return bool(self.api or self.admin)

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries any key of this server (or none is needed)."""
        token = bearer(authorization)
        return not self.enabled or (token is not None and _matches(_digest(token), self.api + self.admin))

    def check(self, token: str | None, *, admin: bool) -> None:
        """Raise 401 (no or unknown key) or 403 (an API key where an admin key is needed)."""
        needed = self.admin if admin and self.admin else self.api + self.admin
        if not needed:
            return
        if token is None:
            raise ApiError(codes.MISSING_API_KEY, "this server needs an API key: send 'Authorization: Bearer <key>'")
        presented = _digest(token)
        if _matches(presented, needed):
            return
        if admin and _matches(presented, self.api):
            raise ApiError(codes.ADMIN_KEY_REQUIRED, "loading and unloading adapters needs an admin API key")
        raise ApiError(codes.INVALID_API_KEY, "the API key is not valid on this server")


def keys_from_env(name: str) -> list[str]:
    """``$name`` as keys: one key, or several separated by commas."""
    return [k for k in os.environ.get(name, "").split(",") if k.strip()]


def bearer(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <token>`` header value, or ``None``."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def install(app: Flask, keys: ServingKeys, *, prefix: str, admin_endpoints: frozenset[str],
            metrics_endpoint: str) -> None:
    """Require a key on every route under ``prefix`` (and ``metrics_endpoint`` when asked), before its
    body is read."""
    if not keys.enabled:
        return
    add_gate(app, lambda method, path, headers: None if not _under(path, prefix) or keys.accepts(
        headers.get("authorization")) else 0)

    @app.before_request
    def _require_key() -> None:
        if _under(request.path, prefix):
            keys.check(bearer(request.headers.get("Authorization")), admin=request.endpoint in admin_endpoints)
        elif keys.metrics_need_key and request.endpoint == metrics_endpoint:
            keys.check(bearer(request.headers.get("Authorization")), admin=False)
