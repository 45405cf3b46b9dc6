"""Reading the old JSON index (``registry.json`` schema_version 1), for ``adapterhub migrate``.

That format kept every version under ``adapters -> name -> versions -> "N"`` and tags under
``adapters -> name -> tags -> tag: N``, all in one file rewritten on every write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import RegistryCorrupt

__all__ = ["LegacyContents", "read_legacy"]


@dataclass(frozen=True)
class LegacyContents:
    records: list[dict[str, Any]]  # by name, then version
    tags: list[tuple[str, str, int]]  # (name, tag, version), dangling ones included

    @property
    def names(self) -> int:
        return len({r["name"] for r in self.records} | {t[0] for t in self.tags})


def read_legacy(doc: Mapping[str, Any], where: str) -> LegacyContents:
    """Every version record and tag of an old index, checked enough to be indexed faithfully."""
    adapters = doc.get("adapters")
    if not isinstance(adapters, dict):
        raise RegistryCorrupt(f"{where}: not an adapterhub index")
    records: list[dict[str, Any]] = []
    tags: list[tuple[str, str, int]] = []
    for name in sorted(adapters):
        entry = adapters[name]
        versions = entry.get("versions") if isinstance(entry, dict) else None
        if not isinstance(versions, dict) or not isinstance(entry.get("tags", {}), dict):
            raise RegistryCorrupt(f"{where}: adapter {name!r} has no versions/tags maps")
        for key in sorted(versions, key=int):
            record = versions[key]
            if not isinstance(record, dict) or record.get("name") != name or str(record.get("version")) != key:
                raise RegistryCorrupt(f"{where}: {name}@{key} is recorded as {record.get('name')}@{record.get('version')}")
            records.append(record)
        tags += [(name, tag, int(version)) for tag, version in sorted(entry.get("tags", {}).items())]
    return LegacyContents(records, tags)
