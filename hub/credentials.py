"""Tokens for hubs, kept per hub URL, as ``hf auth login`` keeps the Hugging Face token.

The file is ``$XDG_CONFIG_HOME/adapterhub/credentials.json`` (by default
``~/.config/adapterhub/credentials.json``), readable by its owner only (mode 0600, in a 0700
folder). Every change rewrites it whole through a temporary file and a rename, under a lock, so a
reader never sees half a file and two logins at once both land. ``hub.remote`` falls back to the
token stored for its URL when neither ``token=`` nor ``$ADAPTERHUB_TOKEN`` gives one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from .atomic_file import write_json_atomic
from .errors import AdapterHubError, InvalidName
from .file_lock import file_lock

__all__ = ["credentials_path", "hub_key", "stored_token", "store_token", "forget_token"]

FILE_NAME = "credentials.json"


def credentials_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "adapterhub" / FILE_NAME


def hub_key(url: str) -> str:
    """The URL a token is filed under: scheme and host in lower case, no trailing '/', so
    ``HTTP://Hub:8000/`` and ``http://hub:8000`` share one token."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise InvalidName(f"{url!r} is not a hub URL (http://HOST:PORT or https://...)")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _read(path: Path) -> dict[str, dict[str, str]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise AdapterHubError(f"{path} cannot be read ({type(e).__name__}); fix it or delete it and log in again") from None
    hubs = doc.get("hubs") if isinstance(doc, dict) else None
    if not isinstance(hubs, dict) or not all(isinstance(v, dict) and isinstance(v.get("token"), str) for v in hubs.values()):
        raise AdapterHubError(f"{path} is not a credentials file of `adapterhub login`; fix it or delete it and log in again")
    return hubs


def stored_token(url: str) -> str | None:
    """The token ``adapterhub login`` stored for the hub at ``url``, if any."""
    entry = _read(credentials_path()).get(hub_key(url))
    return entry["token"] if entry else None


def _write(path: Path, hubs: dict[str, dict[str, str]]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_json_atomic(path, {"hubs": hubs}, mode=0o600, durable=True, sort_keys=True, indent=2)


def store_token(url: str, token: str) -> Path:
    """File ``token`` under ``url`` (replacing one stored before); returns the file's path."""
    path, key = credentials_path(), hub_key(url)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with file_lock(path.with_name(FILE_NAME + ".lock")):
        hubs = _read(path)
        hubs[key] = {"token": token}
        _write(path, hubs)
    return path


def forget_token(url: str) -> bool:
    """Remove the token stored for ``url``; ``False`` if there was none."""
    path, key = credentials_path(), hub_key(url)
    if not path.exists():
        return False
    with file_lock(path.with_name(FILE_NAME + ".lock")):
        hubs = _read(path)
        if hubs.pop(key, None) is None:
            return False
        _write(path, hubs)
    return True
