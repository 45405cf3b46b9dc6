"""Access tokens for a hub: created once, shown once, stored only as their sha256.

The tokens file (``tokens.json`` inside the registry folder, mode 0600) lists each token's id,
name, scope and hash. Tokens are 256 random bits, so a plain sha256 is as good as a slow KDF
against a stolen file; lookups compare the presented token's hash with every stored hash through
``hmac.compare_digest`` (constant time, no early exit), so timing reveals nothing about which
stored token is closest. The CLI creates and revokes tokens; the server only reads the file,
re-reading it when it changes, so a revoked token stops working without a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic_file import write_json_atomic
from .echo import echo
from .errors import AdapterNotFound, InvalidName
from .file_lock import file_lock

__all__ = ["TokenRecord", "TokenStore", "SCOPES", "READ", "WRITE", "TOKENS_FILE", "TOKEN_PREFIX"]

READ = "read"
WRITE = "write"
SCOPES = (READ, WRITE)
TOKENS_FILE = "tokens.json"
TOKENS_LOCK = "tokens.lock"
TOKEN_PREFIX = "ahub_"


@dataclass(frozen=True)
class TokenRecord:
    """What the hub keeps about a token (never the token itself)."""

    id: str
    name: str
    scope: str
    sha256: str
    created: str

    def allows(self, scope: str) -> bool:
        """``write`` implies ``read``."""
        return self.scope == WRITE or scope == READ

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scope": self.scope, "created": self.created}


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """The tokens file of one registry folder."""

    def __init__(self, registry_root: str | os.PathLike) -> None:
        self.path = Path(registry_root) / TOKENS_FILE
        self._cache: tuple[tuple[int, int, int], tuple[TokenRecord, ...]] | None = None

    def records(self) -> tuple[TokenRecord, ...]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return ()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache is None or self._cache[0] != key:
            doc = json.loads(self.path.read_text())
            self._cache = (key, tuple(TokenRecord(**t) for t in doc.get("tokens", [])))
        return self._cache[1]

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Serialise read-modify-write of the tokens file, so concurrent creates lose nothing."""
        return file_lock(self.path.with_name(TOKENS_LOCK))

    def _write(self, records: tuple[TokenRecord, ...]) -> None:
        write_json_atomic(self.path, {"tokens": [asdict(r) for r in records]}, mode=0o600)
        self._cache = None

    def create(self, scope: str, name: str = "") -> tuple[str, TokenRecord]:
        """A new token and its record; the token string is returned here and nowhere else."""
        if scope not in SCOPES:
            raise InvalidName(f"invalid scope {echo(scope)}: use one of {', '.join(SCOPES)}")
        if len(name) > 200 or any(c in name for c in "\x00\r\n"):
            raise InvalidName("invalid token name: one line of at most 200 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        record = TokenRecord(secrets.token_hex(4), name, scope, _hash(token), created)
        with self._locked():
            self._write(self.records() + (record,))
        return token, record

    def revoke(self, token_id: str) -> TokenRecord:
        with self._locked():
            records = self.records()
            hit = [r for r in records if r.id == token_id]
            if not hit:
                raise AdapterNotFound(f"no token with id {echo(token_id)} in {self.path}")
            self._write(tuple(r for r in records if r.id != token_id))
        return hit[0]

    def authenticate(self, token: str) -> TokenRecord | None:
        """The record of ``token``, or None; every stored hash is compared, in constant time each."""
        presented = _hash(token)
        found = None
        for record in self.records():
            if hmac.compare_digest(presented, record.sha256):
                found = record
        return found
