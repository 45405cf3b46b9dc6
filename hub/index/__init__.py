"""The registry's index: which versions exist, their records and tags, behind one SQL layer.

``manifest`` reads and writes ``registry.json`` (where things live); ``sql`` holds the tables and
queries; ``sqlite`` (the embedded default) and ``postgresql`` (shared by several machines) are the
engines; ``json_legacy`` reads the old one-file JSON index and ``migrate`` converts it in place.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidName
from .manifest import Manifest, index_spec
from .postgresql import PostgresIndex
from .sql import Query, Row, SqlIndex
from .sqlite import SqliteIndex

__all__ = ["open_index", "Query", "Row", "SqlIndex", "INDEX_ENV"]

INDEX_ENV = "ADAPTERHUB_INDEX"


def open_index(root: Path, manifest: Manifest, *, override: str | None, durable: bool) -> SqlIndex:
    """The index ``manifest`` names; ``override`` (``--index``) may point a PostgreSQL index at
    another URL of the same engine (the same server as seen from this machine), nothing else."""
    spec = manifest.index
    if override is not None:
        wanted = index_spec(override)
        if wanted["engine"] != spec["engine"]:
            raise InvalidName(
                f"{root} keeps its index in {spec['engine']} ({manifest.describe_index()}); "
                f"--index {wanted['engine']} names another engine"
            )
        spec = wanted if wanted["engine"] == "postgresql" else spec
    if spec["engine"] == "postgresql":
        return PostgresIndex(spec["url"], location=str(root))
    return SqliteIndex(root / spec["path"], location=str(root), durable=durable)
