"""vLLM's served LoRA names: ``lora_name`` -> the registry version it serves.

vLLM serves an adapter under the name a client gave it (``/v1/load_lora_adapter``,
``--lora-modules name=path``) and requests then select it with ``model: <lora_name>``. Here every
served adapter lives in the registry, so a name is an alias for one pinned version (``name@N``: a
later push under the same name does not change what the alias serves). ``lora_path`` is either a
registry reference or a local PEFT folder; a folder is pushed under ``lora_name`` with the
registry's validation and the served base's shape check (``adapterhub push --base <served base>``)
before anything is stored, and a folder already stored under that name is not stored again (a
restart with the same ``--lora-modules`` adds no version). Names not aliased resolve as registry
references, as before.

Flask-free: ``start_engine`` registers ``--lora-modules`` before any app exists.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from typing import TYPE_CHECKING

from adapterhub.adapter_folder import read_adapter_folder
from adapterhub.echo import echo
from adapterhub.errors import AdapterNotFound, InvalidName, InvalidReference, NameTaken, PermissionDenied
from adapterhub.refs import validate_name
from adapterhub.registry import folder_entries, manifest_digest

if TYPE_CHECKING:
    from adapterhub.registry import AdapterVersion
    from adapterhub.registry_protocol import Registry
    from adapterhub.server.engine.engine import Engine

__all__ = ["LoraNames", "NameTaken", "parse_lora_module", "pin_lora_module", "PUSH_TASK"]

# The task recorded for a folder pushed by a load (the registry requires one).
PUSH_TASK = "served (vLLM load_lora_adapter)"


class LoraNames:
    """The served names of one engine; loads and unloads are serialized (they are rare admin calls)."""

    def __init__(self, engine: Engine, *, client_folders: bool = True) -> None:
        self.engine = engine
        # Whether a client's ``lora_path`` may name a folder on this machine (the operator's
        # ``--lora-modules`` always may): a client that may load folders can make the server read
        # any path it can, and tell which exist. ``adapterhub serve`` allows it only behind admin
        # keys or on a loopback address, as vLLM keeps runtime loading off unless asked.
        self.client_folders = client_folders
        self._lock = threading.Lock()
        self._refs: dict[str, str] = {}

    def target(self, model: str) -> str:
        """The registry reference ``model`` stands for (itself when it is not a served name)."""
        return self._refs.get(model, model)

    def served(self) -> dict[str, str]:
        """Served name -> pinned reference."""
        return dict(self._refs)

    def add(self, lora_name: str, lora_path: str, *, replace: bool = False, client: bool = False,
            load: bool = True) -> AdapterVersion:
        """Serve ``lora_path`` (a registry reference or a PEFT folder) as ``lora_name`` and load it
        (``load`` unset: only name it; a fleet's replica loads it when Ray routes it the first
        request, so that Ray's per-replica LRU stays the one eviction policy).

        Raises ``NameTaken`` (already served, ``replace`` unset), ``InvalidName``, ``AdapterNotFound``
        (neither a folder nor a known reference), ``InvalidAdapter`` / ``IncompatibleBase`` (nothing
        stored), ``AdapterBusy`` (every slot in use), ``PermissionDenied`` (a ``client`` naming a
        folder where ``client_folders`` is off)."""
        if not isinstance(lora_name, str) or not isinstance(lora_path, str) or not lora_name or not lora_path:
            raise InvalidName("both 'lora_name' and 'lora_path' must be provided")
        validate_name(lora_name)
        if lora_name == self.engine.base_name:
            raise InvalidName(f"{echo(lora_name)} is the base model's name")
        with self._lock:
            if lora_name in self._refs and not replace:
                raise NameTaken(f"the lora adapter '{lora_name}' has already been loaded; "
                                "set 'load_inplace' to true to replace it")
            adapter = self.engine.resolve(self._version_ref(lora_name, lora_path, client=client))
            if adapter.version is None:
                raise InvalidName(f"{echo(lora_path)} names the base model, not an adapter")
            if load:
                self.engine.load_adapter(adapter)
            self._refs[lora_name] = adapter.version.ref
            return adapter.version

    def remove(self, lora_name: str) -> str:
        """Stop serving ``lora_name`` and free its adapter; returns the reference it served.

        A name never loaded here but resident as a registry reference is unloaded too. Raises
        ``AdapterNotFound`` (not served), ``AdapterInUse`` (in use by running requests)."""
        if not isinstance(lora_name, str) or not lora_name:
            raise InvalidName("'lora_name' needs to be provided to unload a LoRA adapter")
        with self._lock:
            ref = self._refs.get(lora_name)
            if ref is None:
                version = self._resolve_or_none(lora_name)
                ref = version.ref if version is not None else None
                if ref is None or not self.engine.is_loaded(ref):
                    raise AdapterNotFound(f"the lora adapter {echo(lora_name)} cannot be found")
            self.engine.unload_adapter(ref)  # False: evicted meanwhile; the name goes all the same
            self._refs.pop(lora_name, None)
            return ref

    def _resolve_or_none(self, model: str) -> AdapterVersion | None:
        try:
            return self.engine.resolve(model).version
        except (AdapterNotFound, InvalidReference):
            return None

    def _version_ref(self, lora_name: str, lora_path: str, *, client: bool) -> str:
        """The pinned reference ``lora_path`` stands for, pushing a folder first."""
        if client and not self.client_folders and _names_a_folder(lora_path):
            raise PermissionDenied("this server loads client-named folders only behind an admin API key or on a "
                                   "loopback address; push the adapter and name its registry reference")
        if not os.path.isdir(lora_path):
            return lora_path
        return _push_once(self.engine.registry, lora_name, lora_path, self.engine.base_name).ref


def pin_lora_module(registry: Registry, lora_name: str, lora_path: str, *, base: str | None) -> str:
    """``NAME=REFERENCE`` for a ``--lora-modules`` entry, the reference pinned (``name@N``): what every
    replica of a fleet then serves as ``lora_name``. A folder is pushed under ``lora_name`` first
    (checked against ``base``; not again when an identical copy is stored). Raises what a push or
    a resolution raises (``InvalidName``, ``AdapterNotFound``, ``InvalidAdapter``, ...)."""
    validate_name(lora_name)
    if lora_name == base:
        raise InvalidName(f"{echo(lora_name)} is the base model's name")
    if os.path.isdir(lora_path):
        return f"{lora_name}={_push_once(registry, lora_name, lora_path, base).ref}"
    return f"{lora_name}={registry.resolve(lora_path).ref}"


def _push_once(registry: Registry, name: str, folder: str, base: str | None) -> AdapterVersion:
    """The stored version of ``name`` with exactly ``folder``'s files, pushing it if there is none."""
    stored = _stored_copy(registry, name, folder)
    if stored is None:
        stored = registry.push(folder, name=name, task=PUSH_TASK, base=base)
    return stored


def _names_a_folder(path: str) -> bool:
    """Whether a ``lora_path`` is (or would be read as) a folder rather than a registry reference,
    which has at most one ``/`` (``org/name``) and never starts like a path."""
    return (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
            or (os.sep != "/" and os.sep in path) or os.path.isdir(path))


def _stored_copy(registry: Registry, name: str, folder: str) -> AdapterVersion | None:
    """The version of ``name`` with exactly ``folder``'s files, if one is stored."""
    adapter = read_adapter_folder(folder)
    try:
        return registry.resolve(f"{name}@sha256:{manifest_digest(folder_entries(adapter))}")
    except (AdapterNotFound, InvalidReference):
        return None


def client_folders_allowed(host: str, *, admin_keys: bool) -> bool:
    """The rule ``adapterhub serve`` applies to ``LoraNames.client_folders``: admin keys are set, or
    only this machine can reach the port."""
    if admin_keys or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_lora_module(spec: str) -> tuple[str, str]:
    """``name=path`` or vLLM's JSON form ``{"name": ..., "path": ...}`` -> (name, path).

    Raises ``ValueError`` with a one-line reason."""
    text = spec.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{spec!r} is not valid JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not isinstance(doc.get("path"), str):
            raise ValueError(f"{spec!r} needs string 'name' and 'path' fields")
        name, path = doc["name"], doc["path"]
    else:
        name, sep, path = text.partition("=")
        if not sep:
            raise ValueError(f"{spec!r} is not name=path (or {{\"name\": ..., \"path\": ...}})")
    if not name.strip() or not path.strip():
        raise ValueError(f"{spec!r} needs a name and a path")
    return name.strip(), path.strip()
