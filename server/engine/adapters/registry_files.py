"""Where a resident adapter's files are read from: a local store's objects in place (no copy), or a
copy of the version pulled once from a remote hub into a private folder."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapterhub.registry import AdapterVersion
    from adapterhub.registry_protocol import Registry

__all__ = ["AdapterFiles"]


class AdapterFiles:
    """Paths of a version's files, for a cache that loads adapters from ``registry``."""

    def __init__(self, registry: Registry, prefix: str) -> None:
        self._registry = registry
        self._prefix = prefix
        self._folder: Path | None = None
        self._lock = threading.Lock()

    def paths(self, version: AdapterVersion, *names: str) -> list[Path]:
        """The files ``names`` of ``version``, in that order."""
        local = [self._registry.object_path(version.file(name).sha256) for name in names]
        if all(path is not None for path in local):
            return local
        folder = self._pulled_folder() / version.digest
        if not all((folder / name).is_file() for name in names):
            shutil.rmtree(folder, ignore_errors=True)
            self._registry.pull(f"{version.name}@sha256:{version.digest}", folder)
        return [folder / name for name in names]

    def _pulled_folder(self) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix=self._prefix))
            return self._folder
