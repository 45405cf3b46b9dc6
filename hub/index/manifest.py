"""``registry.json``: the registry's entry point, a small human-readable manifest.

It says which format the registry has and where its index and objects live::

    {
      "format": "adapterhub-registry",
      "schema_version": 2,
      "index": {"engine": "sqlite", "path": "index.sqlite"},
      "objects": "objects"
    }

or ``"index": {"engine": "postgresql", "url": "postgresql://host/db"}`` for a shared index. Every
tool reads it first. A ``registry.json`` that still holds the whole index (schema_version 1, an
``adapters`` map) is the old JSON format: ``load_manifest`` reports it as ``Legacy`` and only
``adapterhub migrate`` opens it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_file import write_json_atomic
from ..errors import InvalidName, RegistryCorrupt
from .postgresql import is_postgres_url, redact

__all__ = ["Manifest", "Legacy", "load_manifest", "write_manifest", "index_spec", "MANIFEST_NAME",
           "SCHEMA_VERSION", "LEGACY_SCHEMA_VERSION", "FORMAT", "DEFAULT_SQLITE"]

MANIFEST_NAME = "registry.json"
FORMAT = "adapterhub-registry"
SCHEMA_VERSION = 2
LEGACY_SCHEMA_VERSION = 1
DEFAULT_SQLITE = "index.sqlite"


@dataclass(frozen=True)
class Manifest:
    index: dict[str, str] = field(default_factory=lambda: {"engine": "sqlite", "path": DEFAULT_SQLITE})
    objects: str = "objects"

    @property
    def engine(self) -> str:
        return self.index["engine"]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "index": self.index, "objects": self.objects}

    def describe_index(self) -> str:
        return redact(self.index["url"]) if self.engine == "postgresql" else self.index["path"]


@dataclass(frozen=True)
class Legacy:
    """A registry.json of the old format: the whole index in one JSON document."""

    doc: dict[str, Any]


def index_spec(index: str | None) -> dict[str, str]:
    """The manifest's ``index`` entry for ``--index`` (``sqlite`` or a ``postgresql://`` URL)."""
    if index is None or index == "sqlite":
        return {"engine": "sqlite", "path": DEFAULT_SQLITE}
    if is_postgres_url(index):
        return {"engine": "postgresql", "url": index}
    raise InvalidName(f"invalid --index {index!r}: use 'sqlite' or a postgresql://user@host/database URL")


def load_manifest(path: Path) -> Manifest | Legacy | None:
    """The manifest at ``path``; ``None`` when there is none yet (a registry nobody wrote to)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError as e:
        raise RegistryCorrupt(f"{path}: a folder where the registry's manifest belongs") from e
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryCorrupt(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or ("adapters" not in doc and doc.get("format") != FORMAT):
        raise RegistryCorrupt(f"{path}: not an adapterhub registry")
    version = doc.get("schema_version")
    if "adapters" in doc and version == LEGACY_SCHEMA_VERSION:
        return Legacy(doc)
    if version != SCHEMA_VERSION:
        raise RegistryCorrupt(
            f"{path}: schema_version {version!r} is not supported (this adapterhub reads {SCHEMA_VERSION})"
        )
    return _parse(path, doc)


def _parse(path: Path, doc: dict[str, Any]) -> Manifest:
    index, objects = doc.get("index"), doc.get("objects", "objects")
    ok = isinstance(index, dict) and isinstance(objects, str) and objects and (
        (index.get("engine") == "sqlite" and isinstance(index.get("path"), str) and index["path"])
        or (index.get("engine") == "postgresql" and isinstance(index.get("url"), str) and is_postgres_url(index["url"]))
    )
    if not ok:
        raise RegistryCorrupt(
            f"{path}: the manifest's index must be {{\"engine\": \"sqlite\", \"path\": ...}} or "
            "{\"engine\": \"postgresql\", \"url\": \"postgresql://...\"}, and objects a folder"
        )
    return Manifest(index={k: str(v) for k, v in index.items()}, objects=objects)


def write_manifest(path: Path, manifest: Manifest, *, durable: bool) -> None:
    """Replace ``path`` whole (readers see the old document or the new one)."""
    write_json_atomic(path, manifest.to_json(), durable=durable, sort_keys=True, indent=2)
