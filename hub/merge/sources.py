"""Turn what the user typed (registry references or adapter folders) into validated adapter folders."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..adapter_folder import AdapterFolder, read_adapter_folder
from ..registry import folder_entries, manifest_digest

__all__ = ["AdapterSource", "open_sources"]


@dataclass(frozen=True)
class AdapterSource:
    """One adapter to merge: how the user named it, its manifest digest, and its files on disk."""

    label: str  # ``name@3`` for a registry entry, the folder path otherwise
    digest: str  # ``sha256:...`` of the file manifest (the registry's version identity)
    folder: AdapterFolder
    task: str = ""

    def lineage(self, weight: float) -> dict[str, Any]:
        return {"ref": self.label, "digest": self.digest, "weight": weight}


def _folder_digest(folder: AdapterFolder) -> str:
    return "sha256:" + manifest_digest(folder_entries(folder))


@contextlib.contextmanager
def open_sources(refs: Sequence[str], registry_location: str | None = None) -> Iterator[list[AdapterSource]]:
    """Resolve each REF (an adapter folder, else a registry reference) and pull registry entries into a
    temporary folder that lives as long as the context."""
    with tempfile.TemporaryDirectory(prefix="adapterhub-merge-") as tmp:
        registry = None
        out: list[AdapterSource] = []
        for i, ref in enumerate(refs):
            if os.path.isdir(ref):
                folder = read_adapter_folder(ref)
                out.append(AdapterSource(str(ref), _folder_digest(folder), folder))
                continue
            if registry is None:
                from ..location import open_registry

                registry = open_registry(registry_location)
            version = registry.resolve(ref)
            dest = Path(tmp) / f"{i}"
            registry.pull(version.ref, dest)
            out.append(AdapterSource(version.ref, "sha256:" + version.digest, read_adapter_folder(dest), version.task))
        yield out
