"""Which registry a command uses, decided in one place for every front end.

Order: an explicit location (``--registry``), then ``$ADAPTERHUB_REGISTRY``, then the checkout's
own top-level ``registry.json`` when adapterhub runs from a source checkout, then a per-user
folder (``$XDG_DATA_HOME/adapterhub``, by default ``~/.local/share/adapterhub``). A location that
starts with ``http://`` or ``https://`` is a remote hub. A local location is made absolute here,
once, so nothing downstream depends on the working folder staying where it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidName
from .registry import INDEX_NAME, LocalRegistry
from .registry_protocol import Registry

__all__ = ["ENV_REGISTRY", "default_location", "default_folder", "describe_default", "local_root", "open_registry",
           "as_registry", "registry_folder", "is_remote",
           "portable_location"]

ENV_REGISTRY = "ADAPTERHUB_REGISTRY"


def is_remote(location: str) -> bool:
    return location.startswith(("http://", "https://"))


# The folder holding the package's sources: a source checkout's root when running from one (hub/ is
# the package), site-packages in an installed wheel.
CHECKOUT = Path(__file__).resolve().parent.parent


def default_location() -> str:
    env = os.environ.get(ENV_REGISTRY)
    if env:
        return env
    return default_folder()


def default_folder() -> str:
    """The registry a command uses when neither ``--registry`` nor ``$ADAPTERHUB_REGISTRY`` says."""
    if _is_checkout():
        return str(CHECKOUT)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "adapterhub")


def _is_checkout() -> bool:
    return (CHECKOUT / INDEX_NAME).is_file() and (CHECKOUT / "pyproject.toml").is_file()


def describe_default() -> str:
    """The default registry as help texts state it, by the rule ``default_location`` applies here
    and now (a pip install and a checkout differ, and so do environments)."""
    env = os.environ.get(ENV_REGISTRY)
    where = f"${ENV_REGISTRY}, now {env}" if env else f"${ENV_REGISTRY} when set"
    kind = "this source checkout's registry" if _is_checkout() else "the registry of this user"
    return f"{where}; else {kind} {default_folder()}"


def local_root(location: str | os.PathLike) -> str:
    """A local registry location as an absolute path (``~`` expanded)."""
    return os.path.abspath(os.path.expanduser(os.fspath(location)))


def open_registry(location: str | os.PathLike | None = None, *, token: str | None = None,
                  index: str | None = None) -> Registry:
    """A registry object for ``location`` (see the module docstring for the default); ``index``
    (``--index``: ``sqlite`` or ``postgresql://...``) picks a folder's index engine (``LocalRegistry``)."""
    loc = str(location) if location else default_location()
    if is_remote(loc):
        if index is not None:
            raise InvalidName(f"--index applies to a registry folder; the hub at {loc} keeps its own index")
        from .remote import RemoteRegistry

        return RemoteRegistry(loc, token=token)
    return LocalRegistry(local_root(loc), index=index)


def as_registry(registry: Registry | str | os.PathLike | None) -> Registry:
    """What the Python API's ``registry=`` arguments accept, as a registry: an open one as it is, a
    location opened (``None``: the default one)."""
    if registry is None or isinstance(registry, (str, os.PathLike)):
        return open_registry(registry)
    return registry


def portable_location(location: str | os.PathLike | None, *, token: str | None = None) -> tuple[str, str | None]:
    """``location`` (``None``: the default) as another process, perhaps on another machine, must be
    told it: a folder made absolute, or a hub URL with the token this process would send
    (``token``, else ``$ADAPTERHUB_TOKEN``, else the one ``adapterhub login`` stored)."""
    loc = str(location) if location else default_location()
    if is_remote(loc):
        from .remote import hub_token

        return loc, hub_token(loc.rstrip("/"), token)
    return local_root(loc), None


def registry_folder(location: str | os.PathLike | None, command: str) -> str:
    """The registry folder ``location`` names (``None``: the default), absolute, for a ``command``
    that works on the folder itself; ``InvalidName`` for a hub URL."""
    loc = str(location) if location else default_location()
    if is_remote(loc):
        raise InvalidName(f"{loc} is a URL: {command} runs on the machine that holds the registry folder, "
                          "with --registry its path")
    return local_root(loc)
