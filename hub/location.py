"""Which registry a command uses, decided in one place for every front end.

Order: an explicit location (``--registry``), then ``$ADAPTERHUB_REGISTRY``, then the checkout's
own top-level ``registry.json`` when adapterhub runs from a source checkout, then a per-user
folder (``$XDG_DATA_HOME/adapterhub``, by default ``~/.local/share/adapterhub``). A location that
starts with ``http://`` or ``https://`` is a remote hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from .registry import INDEX_NAME, LocalRegistry
from .registry_protocol import Registry

__all__ = ["ENV_REGISTRY", "default_location", "open_registry", "is_remote"]

ENV_REGISTRY = "ADAPTERHUB_REGISTRY"


def is_remote(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def default_location() -> str:
    env = os.environ.get(ENV_REGISTRY)
    if env:
        return env
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / INDEX_NAME).is_file() and (checkout / "pyproject.toml").is_file():
        return str(checkout)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "adapterhub")


def open_registry(location: str | os.PathLike | None = None, *, token: str | None = None) -> Registry:
    """A registry object for ``location`` (see the module docstring for the default)."""
    loc = str(location) if location else default_location()
    if is_remote(loc):
        from .remote import RemoteRegistry

        return RemoteRegistry(loc, token=token)
    return LocalRegistry(loc)
