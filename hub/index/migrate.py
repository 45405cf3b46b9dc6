"""``adapterhub migrate``: convert a registry of the old format (the whole index inside
``registry.json``) in place, losing nothing.

Under the registry lock (which old adapterhub writers also take, so none is mid-write), every
version record is copied byte for byte (as sorted JSON, as the old index stored it) and every tag,
dangling ones included, into the new index in one transaction; the objects stay where they are.
The old ``registry.json`` is kept as ``registry.v1.json`` (a hard link: no copy), and only then is
``registry.json`` replaced by the manifest in one rename: the commit point. A migration killed
before it leaves the old registry working and at most a temporary index file (``gc`` removes it);
running it again starts over.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..atomic_file import fsync_path
from ..errors import RegistryCorrupt
from ..file_lock import EXCLUSIVE, file_lock
from . import open_index
from .json_legacy import read_legacy
from .manifest import MANIFEST_NAME, Legacy, Manifest, index_spec, load_manifest, write_manifest
from .sql import SqlIndex
from .sqlite import TEMP_PREFIX, SqliteIndex

__all__ = ["MigrationReport", "migrate_registry", "BACKUP_NAME"]

BACKUP_NAME = "registry.v1.json"


@dataclass(frozen=True)
class MigrationReport:
    migrated: bool  # False: the registry already had the new format; nothing was done
    index: str
    adapters: int = 0
    versions: int = 0
    tags: int = 0
    backup: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"migrated": self.migrated, "index": self.index, "adapters": self.adapters,
                "versions": self.versions, "tags": self.tags, "backup": self.backup}


def migrate_registry(root: Path, *, index: str | None = None, durable: bool = True) -> MigrationReport:
    """Convert the registry at ``root`` to the manifest and an index (``index``: ``sqlite``, the
    default, or a ``postgresql://`` URL of an empty database)."""
    manifest_path = root / MANIFEST_NAME
    with file_lock(root / "registry.lock", EXCLUSIVE):
        found = load_manifest(manifest_path)
        if found is None:
            raise RegistryCorrupt(f"no registry at {root} (no {MANIFEST_NAME})")
        if isinstance(found, Manifest):
            return MigrationReport(migrated=False, index=found.describe_index())
        assert isinstance(found, Legacy)
        contents = read_legacy(found.doc, str(manifest_path))
        manifest = Manifest(index=index_spec(index))
        target = open_index(root, manifest, override=None, durable=durable)

        def fill(staged: SqlIndex) -> None:
            staged.load(contents.records, contents.tags)

        if isinstance(target, SqliteIndex):
            _build_sqlite(target, fill)
        else:
            target.create()
            fill(target)
        backup = root / BACKUP_NAME
        _link_over(manifest_path, backup)
        write_manifest(manifest_path, manifest, durable=durable)
    return MigrationReport(migrated=True, index=manifest.describe_index(), adapters=contents.names,
                           versions=len(contents.records), tags=len(contents.tags), backup=str(backup))


def _build_sqlite(target: SqliteIndex, fill: Callable[[SqlIndex], None]) -> None:
    """Build the whole file under a temporary name, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".sqlite", dir=target.path.parent)
    os.close(fd)
    try:
        target.build(Path(tmp), fill)
        os.replace(tmp, target.path)
        if target.durable:  # the index's name must outlive a power cut before the manifest names it
            fsync_path(target.path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _link_over(src: Path, dst: Path) -> None:
    """Make ``dst`` another name of ``src`` (replacing any ``dst`` of an earlier attempt)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.link(src, tmp)
    os.replace(tmp, dst)
