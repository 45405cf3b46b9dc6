"""``Registry``: the calls every registry answers, wherever its index and objects live.

``LocalRegistry`` (a folder, with its index in SQLite or PostgreSQL) and ``RemoteRegistry`` (a hub
over HTTP) implement it, so the CLI, the merger, the trainer and the serving engine take a
``Registry`` and never ask which kind they hold. Every call raises the classes of
``adapterhub.errors``, the same for every kind (a remote hub's errors come back as the class the
hub raised).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from .registry import AdapterVersion, GcReport, VerifyReport

__all__ = ["Registry"]


class Registry(Protocol):
    """Versions of PEFT adapters by name, with tags, behind one set of calls."""

    @property
    def location(self) -> str:
        """Where the registry is (a folder or a URL), as messages show it."""
        ...

    def resolve(self, ref: str) -> AdapterVersion:
        """The version a reference (``name``, ``name:tag``, ``name@3``, ``name@sha256:...``) points at
        now; ``AdapterNotFound`` if none."""
        ...

    def list(
        self,
        *,
        base: str | None = None,
        task: str | None = None,
        adapter_type: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: str | None = None,
    ) -> list[AdapterVersion]:
        """The versions matching all the given filters, by name then version: at most ``limit`` of
        them after skipping ``offset``, or those after the cursor ``after`` (``name@version``, the
        last one of the previous page). ``tag`` keeps the versions a tag points at
        (``tag="latest"``: the newest of each name). The filters and the page are applied in the
        index, so a page costs the same in a registry of any size."""
        ...

    def push(
        self,
        folder: str | os.PathLike,
        *,
        name: str,
        task: str,
        base: str | None = None,
        tags: Iterable[str] = (),
        description: str = "",
        metrics: Mapping[str, Any] | None = None,
        lineage: Iterable[Mapping[str, Any]] = (),
        training: Mapping[str, Any] | None = None,
    ) -> AdapterVersion:
        """Validate the PEFT adapter ``folder`` and record it as the next version of ``name``."""
        ...

    def pull(self, ref: str, out_dir: str | os.PathLike, *, force: bool = False) -> AdapterVersion:
        """Write the version's files, every digest verified, into a folder PEFT loads; files that
        hold other bytes are kept unless ``force``."""
        ...

    def tag(self, ref: str, tag: str) -> AdapterVersion:
        """Point ``tag`` at the version ``ref`` resolves to (moving it if it pointed elsewhere)."""
        ...

    def untag(self, ref: str, tag: str | None = None) -> AdapterVersion:
        """Remove a tag (``name:tag``, or ``tag`` of the version ``ref`` names) and keep its version;
        ``latest`` is refused (it follows the newest version)."""
        ...

    def set_metrics(self, ref: str, metrics: Mapping[str, Any]) -> AdapterVersion:
        """Add or update metrics of a version (evaluation can finish after the push)."""
        ...

    def remove(self, ref: str, *, all_versions: bool = False) -> list[AdapterVersion]:
        """Remove one version (``name@N``, ``name@sha256:...``), or every version of a bare name with
        ``all_versions``; a tag reference is refused (``untag`` removes a tag)."""
        ...

    def verify(self) -> VerifyReport:
        """Check every referenced object is present and intact."""
        ...

    def gc(self) -> GcReport:
        """Remove objects no version references; a registry that cannot (a remote hub) raises
        ``RemoteError`` saying where to run it."""
        ...

    def object_path(self, digest: str) -> Path | None:
        """The object's file on this machine, to read in place; ``None`` when the objects live
        elsewhere (``pull`` brings a version here)."""
        ...
