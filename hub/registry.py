"""A local registry: the ``registry.json`` manifest, an index, and the content-addressed store.

Layout of a registry folder::

    registry.json        the manifest: format, schema_version, where the index and objects live
    index.sqlite         the index (SQLite, WAL mode), unless the manifest names a PostgreSQL one
    objects/sha256/..    adapter files, named by their sha256 (identical files stored once)
    objects/tmp/         temporaries of writes in progress (a killed writer leaves them here)
    objects.lock         pushes hold it shared while their objects are not yet indexed; gc exclusive
    registry.lock        held while the registry is created or migrated (flock: released on death)

The index (``adapterhub.index``) commits each write as one transaction, so readers never see a
partial write and a writer killed at any point leaves the previous state; each command reads and
writes only the rows it needs. Objects are written (and fsynced) before the index names them: a
killed push can leave unreferenced objects (``verify`` reports them, ``gc`` removes them), never an
index entry without its bytes. A registry of the old format (the whole index inside
``registry.json``) is converted by ``adapterhub migrate``; every other call refuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import EllipsisType
from typing import Any, Iterable, Mapping

from .adapter_folder import AdapterFolder, read_adapter_folder
from .base_model import check_adapter_fits, load_base_info
from .blobstore import BlobStore, StoredObject, sha256_file
from .echo import echo
from .errors import (
    AdapterNotFound,
    ConcurrentModification,
    InvalidAdapter,
    InvalidName,
    ObjectMissing,
    RegistryCorrupt,
)
from .file_lock import EXCLUSIVE, SHARED, file_lock
from .index import INDEX_ENV, Query, Row, SqlIndex, open_index
from .index.manifest import MANIFEST_NAME, SCHEMA_VERSION, Legacy, Manifest, index_spec, load_manifest, write_manifest
from .index.sqlite import TEMP_PREFIX
from .peft_format import safetensors_problem
from .pull_folder import open_pull_folder
from .record_bounds import check_metrics, check_record
from .refs import LATEST, Reference, parse_reference, validate_name, validate_tag

__all__ = [
    "AdapterVersion",
    "FileEntry",
    "LocalRegistry",
    "VerifyReport",
    "GcReport",
    "INDEX_NAME",
    "SCHEMA_VERSION",
    "manifest_digest",
]

INDEX_NAME = MANIFEST_NAME  # the file a registry is found by (a folder or this file names it)
FSYNC_ENV = "ADAPTERHUB_FSYNC"


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


def folder_entries(adapter: AdapterFolder) -> list[FileEntry]:
    """The manifest entries of an adapter folder's files as they are on disk now: what a push of it
    would record, so their ``manifest_digest`` says whether a registry already holds it."""
    return [FileEntry(p, sha256_file(adapter.path / p), (adapter.path / p).stat().st_size) for p in adapter.files]


def manifest_digest(files: Iterable[FileEntry]) -> str:
    """The version's identity: sha256 of its sorted (path, digest, size) list, like an OCI manifest."""
    canon = json.dumps([f.to_dict() for f in sorted(files, key=lambda f: f.path)], separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


@dataclass(frozen=True)
class AdapterVersion:
    """One immutable version of an adapter, as the index records it (tags are the mutable part)."""

    name: str
    version: int
    digest: str
    adapter_type: str
    task: str
    base: dict[str, Any]
    peft: dict[str, Any]
    files: tuple[FileEntry, ...]
    created: str
    description: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: tuple[dict[str, Any], ...] = ()
    training: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise AdapterNotFound(f"{self.ref} has no file {echo(path)}")

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "version": self.version,
            "digest": "sha256:" + self.digest,
            "adapter_type": self.adapter_type,
            "task": self.task,
            "base": self.base,
            "description": self.description,
            "peft": self.peft,
            "files": [f.to_dict() for f in self.files],
            "total_size": self.total_size,
            "created": self.created,
            "metrics": self.metrics,
            "lineage": list(self.lineage),
        }
        if self.training is not None:
            d["training"] = self.training
        return d

    def to_json(self) -> dict[str, Any]:
        """The record with its tags: what the hub API answers and ``--json`` prints."""
        return self.to_dict() | {"tags": list(self.tags)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "AdapterVersion":
        """The version ``to_json`` wrote (a hub's answer)."""
        return cls.from_dict(d, tuple(d.get("tags", ())))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], tags: tuple[str, ...] = ()) -> "AdapterVersion":
        return cls(
            name=d["name"],
            version=int(d["version"]),
            digest=str(d["digest"]).removeprefix("sha256:"),
            adapter_type=d["adapter_type"],
            task=d.get("task", ""),
            base=dict(d.get("base") or {}),
            peft=dict(d.get("peft") or {}),
            files=tuple(FileEntry(f["path"], f["sha256"], int(f["size"])) for f in d["files"]),
            created=d.get("created", ""),
            description=d.get("description", ""),
            metrics=dict(d.get("metrics") or {}),
            lineage=tuple(d.get("lineage") or ()),
            training=d.get("training"),
            tags=tags,
        )


@dataclass
class VerifyReport:
    """Outcome of ``verify``: ``problems`` make it fail; orphans and temporaries are only reported."""

    checked_versions: int = 0
    checked_objects: int = 0
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked_versions": self.checked_versions,
            "checked_objects": self.checked_objects,
            "problems": self.problems,
            "orphans": self.orphans,
            "temporaries": self.temporaries,
        }


@dataclass
class GcReport:
    removed_objects: int = 0
    removed_temporaries: int = 0
    freed_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed_objects": self.removed_objects,
            "removed_temporaries": self.removed_temporaries,
            "freed_bytes": self.freed_bytes,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_text(value: str, what: str, limit: int = 10_000) -> str:
    if not isinstance(value, str) or len(value) > limit or any(c in value for c in "\x00\r"):
        raise InvalidName(f"invalid {what}: text of at most {limit} characters without NUL or CR")
    return value


class LocalRegistry:
    """A registry in a local folder (created on first write); implements ``Registry``."""

    def __init__(self, root: str | os.PathLike, *, durable: bool | None = None, index: str | None = None) -> None:
        """``durable`` (default: on unless ``$ADAPTERHUB_FSYNC`` is ``0``) fsyncs every object
        before the index names it and every index commit, so even a power loss cannot leave the
        index pointing at bytes that never reached the disk. A killed process is safe either way.

        ``index`` (default ``$ADAPTERHUB_INDEX``): ``sqlite`` or a ``postgresql://`` URL, recorded
        in the manifest when this call creates the registry; for an existing PostgreSQL index it
        may give the URL under which this machine reaches the same server."""
        if durable is None:
            durable = os.environ.get(FSYNC_ENV, "1") != "0"
        root = Path(root)
        if root.name == INDEX_NAME:  # accept the manifest file itself as the location
            root = root.parent
        self.root = root
        self.manifest_path = root / INDEX_NAME
        self.durable = durable
        self.index_override = index if index is not None else (os.environ.get(INDEX_ENV) or None)
        if self.index_override is not None:
            index_spec(self.index_override)  # a malformed --index fails before anything else
        self._opened: tuple[tuple[int, int, int], Manifest, SqlIndex] | None = None
        self._index_exists = False
        self._stores: dict[str, BlobStore] = {}

    def __repr__(self) -> str:
        return f"LocalRegistry({str(self.root)!r})"

    @property
    def location(self) -> str:
        return str(self.root)

    # --- manifest and index --------------------------------------------------------------------

    def _manifest(self) -> tuple[Manifest, SqlIndex] | None:
        """The manifest and its index (reopened only when registry.json changes); ``None`` before
        the first write."""
        try:
            st = self.manifest_path.stat()
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._opened is not None and self._opened[0] == key:
            return self._opened[1], self._opened[2]
        manifest = load_manifest(self.manifest_path)
        if manifest is None:
            return None
        if isinstance(manifest, Legacy):
            raise RegistryCorrupt(
                f"{self.root} keeps its index in the old JSON format (registry.json schema_version 1): "
                f"run `adapterhub migrate --registry {self.root}` to convert it in place (nothing is lost)"
            )
        index = open_index(self.root, manifest, override=self.index_override, durable=self.durable)
        self._opened, self._index_exists = (key, manifest, index), False
        return manifest, index

    def _index(self, *, create: bool = False) -> SqlIndex | None:
        """The index; ``None`` while the registry has none yet, unless ``create`` makes it."""
        opened = self._manifest()
        if opened is None:
            if not create:
                return None
            opened = self._create()
        index = opened[1]
        if not self._index_exists:
            if not index.exists():
                if not create:
                    return None
                index.create()
            self._index_exists = True
        return index

    def _create(self) -> tuple[Manifest, SqlIndex]:
        """Write the manifest of a new registry (its index first, so the manifest never names an
        index without tables); of several processes creating it at once, one does."""
        with self._flock("registry.lock", EXCLUSIVE):
            opened = self._manifest()
            if opened is not None:
                return opened
            manifest = Manifest(index=index_spec(self.index_override))
            open_index(self.root, manifest, override=None, durable=self.durable).create()
            write_manifest(self.manifest_path, manifest, durable=self.durable)
            opened = self._manifest()
            assert opened is not None
            return opened

    @property
    def store(self) -> BlobStore:
        """The objects, where the manifest says (``objects/`` beside it by default); one store per
        folder, so what ``staged`` links is known to the ``push`` that stores it."""
        opened = self._manifest()
        folder = opened[0].objects if opened is not None else "objects"
        store = self._stores.get(folder)
        if store is None:
            store = self._stores.setdefault(folder, BlobStore(self.root / folder, durable=self.durable))
        return store

    def _flock(self, name: str, mode: int) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / name, mode)

    def _require(self, name: str) -> SqlIndex:
        index = self._index()
        if index is None:
            raise AdapterNotFound(f"no adapter named {echo(name)} in {self.location}")
        return index

    # --- lookups -------------------------------------------------------------------------------

    def resolve(self, ref: str | Reference) -> AdapterVersion:
        """The version a reference points at now."""
        parsed = ref if isinstance(ref, Reference) else parse_reference(ref)
        return _version(self._require(parsed.name).resolve(parsed))

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
        """The versions matching every given filter, by name then version; a page of at most
        ``limit`` of them after skipping ``offset``, or those after the cursor ``after``
        (``name@version``, the last one of the previous page).

        ``base`` matches the base name as pushed or a prefix of its fingerprint; ``tag`` keeps the
        versions a tag points at (``tag="latest"``: the newest of each name).
        """
        cursor = None
        if after is not None:
            ref = parse_reference(after)
            if ref.version is None:
                raise InvalidName(f"invalid cursor {echo(after)}: give name@version, the last one listed")
            cursor = (ref.name, ref.version)
        index = self._index()
        if index is None:
            return []
        query = Query(name=name, task=task, adapter_type=adapter_type, base=base, tag=tag, limit=limit,
                      offset=offset, after=cursor)
        return [_version(row) for row in index.list(query)]

    # --- writes --------------------------------------------------------------------------------

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
        """Validate a PEFT adapter folder, store its files and record it as the next version.

        The base defaults to the adapter's ``base_model_name_or_path``. When the base's files can
        be read (a local folder, or a Hub id with network), every adapter tensor is checked against
        the base's module shapes before anything is stored.
        """
        return self._push(folder, name=name, task=task, base=base, tags=tags, description=description,
                          metrics=metrics, lineage=lineage, training=training, on_latest=...)

    def push_if_latest(self, folder: str | os.PathLike, latest: int | None, **push: Any) -> AdapterVersion:
        """``push`` as a check-and-set: the version is recorded only if ``latest`` still points at
        version ``latest`` (``None``: the name has none yet) when the index writes it, else
        ``ParentMoved``. A Hugging Face commit builds on the head it read, and this keeps it from
        undoing a commit that landed in between."""
        return self._push(folder, on_latest=latest, **push)

    def _push(
        self,
        folder: str | os.PathLike,
        *,
        name: str,
        task: str,
        on_latest: int | None | EllipsisType,
        base: str | None = None,
        tags: Iterable[str] = (),
        description: str = "",
        metrics: Mapping[str, Any] | None = None,
        lineage: Iterable[Mapping[str, Any]] = (),
        training: Mapping[str, Any] | None = None,
    ) -> AdapterVersion:
        validate_name(name)
        tags = [validate_tag(t) for t in tags]
        _check_text(task, "task", 200)
        _check_text(description, "description")
        metrics = check_metrics(metrics)
        self._index()  # an unreadable or old-format registry fails the push before any object is stored
        adapter = read_adapter_folder(folder)
        base_record = self._base_record(adapter, base)
        with self._flock("objects.lock", SHARED):  # keeps gc away from objects not yet indexed
            stored = [(p, self.store.put_file(adapter.path / p)) for p in adapter.files]
            files = tuple(FileEntry(p, o.digest, o.size) for p, o in stored)
            record = AdapterVersion(
                name=name,
                version=0,
                digest=manifest_digest(files),
                adapter_type=adapter.adapter_type,
                task=task,
                base=base_record,
                peft=adapter.summary(),
                files=files,
                created=_now(),
                description=description,
                metrics=metrics,
                lineage=tuple(dict(x) for x in lineage),
                training=dict(training) if training is not None else None,
            )
            check_record(record.to_dict())
            index = self._index(create=True)
            assert index is not None
            return _version(index.add(name, lambda version: replace(record, version=version).to_dict(), tags,
                                      on_latest=on_latest))

    def _base_record(self, adapter: AdapterFolder, base: str | None) -> dict[str, Any]:
        base_name = base or adapter.base_model
        if not base_name:
            raise InvalidAdapter(
                f"{adapter.path}: {adapter.config_file} names no base_model_name_or_path; pass the base explicitly"
            )
        revision = adapter.settings.revision if adapter.settings is not None else None  # a template names none
        info = load_base_info(base_name, revision)
        if info is not None:
            check_adapter_fits(adapter, info)
        record: dict[str, Any] = {
            "name": base_name,
            "fingerprint": info.fingerprint if info is not None else None,
            "model_type": info.model_type if info is not None else None,
            "shapes": {u.module: list(u.weight_shape) for u in adapter.modules},
        }
        if revision:
            record["revision"] = revision
        return record

    def tag(self, ref: str, tag: str) -> AdapterVersion:
        """Point ``tag`` at the version ``ref`` resolves to (moving it if it pointed elsewhere)."""
        validate_tag(tag)
        parsed = parse_reference(ref)
        return _version(self._require(parsed.name).tag(parsed, tag))

    def set_metrics(self, ref: str, metrics: Mapping[str, Any]) -> AdapterVersion:
        """Add or update metrics of a version (evaluation can finish after the push)."""
        metrics = check_metrics(metrics)
        parsed = parse_reference(ref)

        def merge(record: dict[str, Any]) -> dict[str, Any]:
            merged = record | {"metrics": check_metrics({**record.get("metrics", {}), **metrics})}
            check_record(merged)
            return merged

        return _version(self._require(parsed.name).update(parsed, merge))

    def remove(self, ref: str, *, all_versions: bool = False) -> list[AdapterVersion]:
        """Remove one version, or every version of a name with ``all_versions``.

        A bare name without ``all_versions`` is refused: it would silently mean "latest".
        Objects stay in the store until ``gc``.
        """
        parsed = parse_reference(ref)
        if all_versions and not parsed.bare:
            raise InvalidName("--all takes a bare adapter name, not a version, tag or digest")
        if not all_versions and parsed.bare:
            raise InvalidName(
                f"say which version of {parsed.name} to remove ({parsed.name}@N or {parsed.name}@sha256:DIGEST), "
                f"or pass --all to remove every version; {parsed.name}:TAG removes only a tag"
            )
        if parsed.tag is not None and not all_versions:
            target = self.resolve(parsed)
            raise InvalidName(
                f"{ref} names a tag, not a version: untag it (`adapterhub rm {ref}` or `adapterhub untag {ref}`), "
                f"or remove the version it points at as {target.ref}"
            )
        return [_version(row) for row in self._require(parsed.name).remove(parsed, all_versions=all_versions)]

    def untag(self, ref: str, tag: str | None = None) -> AdapterVersion:
        """Remove a tag and keep its version: ``untag("name:tag")``, or ``untag(ref, tag)``, which
        removes ``tag`` of ``ref``'s name, and only if it points at the version ``ref`` resolves to
        when ``ref`` names one (``name@N``, a digest, another tag). Returns that version.

        ``latest`` is refused: pushes and removals keep it on the newest version and a bare name
        resolves through it, so removing it would break every bare reference until the next push.
        """
        parsed = parse_reference(ref)
        check_version = tag is not None and not parsed.bare
        if tag is None:
            if parsed.tag is None or parsed.bare:
                raise InvalidName(f"say which tag to remove: {parsed.name}:TAG, or a reference and a tag")
            tag = parsed.tag
        validate_tag(tag)
        if tag == LATEST:
            raise InvalidName(
                f"{parsed.name}:{LATEST} follows the newest version and is not removed; point it elsewhere "
                f"with `adapterhub tag {parsed.name}@N {LATEST}`, or remove versions"
            )
        index = self._require(parsed.name)
        tagged = _version(index.resolve(Reference(parsed.name, tag=tag)))
        if check_version:
            wanted = _version(index.resolve(parsed))
            if wanted.version != tagged.version:
                raise InvalidName(f"{parsed.name}:{tag} points at {tagged.ref}, not {wanted.ref}; nothing removed")
        if not index.untag(parsed.name, tag, tagged.version):
            raise ConcurrentModification(f"{parsed.name}:{tag} moved while it was being removed; nothing removed")
        return _version(index.resolve(Reference(parsed.name, version=tagged.version)))

    # --- reading files -------------------------------------------------------------------------

    def pull(self, ref: str, out_dir: str | os.PathLike, *, force: bool = False) -> AdapterVersion:
        """Write the version's files into ``out_dir`` as a folder ``PeftModel.from_pretrained`` loads.

        Every object is re-hashed on the way out. All files are written to temporaries first and
        renamed only when every one verified, so a corrupted object leaves ``out_dir`` untouched.
        Existing different files are kept unless ``force``.
        """
        target = self.resolve(ref)
        out, created = open_pull_folder(out_dir, target.files, force=force)
        temps: list[tuple[Path, Path]] = []
        try:
            for f in target.files:
                fd, tmp = tempfile.mkstemp(prefix=f".{f.path}.", dir=out)
                temps.append((Path(tmp), out / f.path))
                with os.fdopen(fd, "wb") as dst:
                    self.store.copy_out(f.sha256, dst)
            for tmp, final in temps:
                os.chmod(tmp, 0o644)
                os.replace(tmp, final)
        except BaseException:
            for tmp, _ in temps:
                tmp.unlink(missing_ok=True)
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        return target

    def object_path(self, digest: str) -> Path:
        """Where an object lives (servers stream and load files from it without copying them)."""
        path = self.store.path(digest)
        if not path.is_file():
            raise ObjectMissing(f"object sha256:{digest} is missing from the store")
        return path

    def put_object(self, stream, expected: str) -> StoredObject:
        """Store bytes that must hash to ``expected`` (remote pushes upload objects one by one)."""
        with self._flock("objects.lock", SHARED):
            return self.store.put_stream(stream, expected)

    # --- maintenance ---------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Check every referenced object is present and intact; list orphans and stray temporaries."""
        report = VerifyReport()
        index = self._index()
        lost = self._lost_index(index)
        if lost:
            report.problems.append(lost)
        referenced: dict[str, list[str]] = {}
        for name, key, rec in index.scan() if index is not None else ():
            report.checked_versions += 1
            files = [FileEntry(f["path"], f["sha256"], int(f["size"])) for f in rec["files"]]
            if manifest_digest(files) != rec["digest"].removeprefix("sha256:"):
                report.problems.append(f"{name}@{key}: manifest digest does not match its files")
            for f in files:
                referenced.setdefault(f.sha256, []).append(f"{name}@{key}/{f.path}")
        for name, tag, v in index.dangling_tags() if index is not None else ():
            report.problems.append(f"{name}:{tag} points at missing version {v}")
        for digest, users in sorted(referenced.items()):
            report.checked_objects += 1
            problem = self.store.check(digest)
            if problem is None and any(u.endswith(".safetensors") for u in users):
                problem = safetensors_problem(self.store.path(digest))
            if problem:
                report.problems.append(f"object sha256:{digest} {problem} (used by {', '.join(users)})")
        report.orphans = [d for d in self.store.iter_digests() if d not in referenced]
        report.temporaries = [str(p) for p in self._temporaries()]
        return report

    def _lost_index(self, index: SqlIndex | None) -> str | None:
        """Why the store cannot be judged: the manifest names an index that is gone (a deleted
        ``index.sqlite``, a wiped database) while objects remain. Treated as an empty registry,
        every object would look unreferenced; a manifest with no objects yet (a fresh checkout) is fine."""
        opened = self._manifest()
        if index is not None or opened is None or next(self.store.iter_digests(), None) is None:
            return None
        return f"{self.manifest_path} names the index {opened[0].describe_index()}, which is missing, yet the store holds objects"

    def _temporaries(self) -> list[Path]:
        """What writers that died left: partial object uploads, manifests, indexes being built, and
        staging folders untouched for a day (``BlobStore.iter_temporaries``)."""
        if not self.root.is_dir():
            return []
        own = sorted(self.root.glob(".registry-*.json")) + sorted(self.root.glob(f"{TEMP_PREFIX}*"))
        return list(self.store.iter_temporaries()) + own

    def gc(self) -> GcReport:
        """Remove objects no version references, and temporaries of writers that died."""
        report = GcReport()
        with self._flock("objects.lock", EXCLUSIVE), self._flock("registry.lock", EXCLUSIVE):
            index = self._index()
            lost = self._lost_index(index)
            if lost:
                raise RegistryCorrupt(f"{lost}: gc would delete every object, so it stops")
            scan = index.scan() if index is not None else ()
            referenced = {f["sha256"] for _, _, rec in scan for f in rec["files"]}
            for digest in list(self.store.iter_digests()):
                if digest not in referenced:
                    report.freed_bytes += self.store.delete(digest)
                    report.removed_objects += 1
            for tmp in list(self._temporaries()):
                report.freed_bytes += _remove(tmp)
                report.removed_temporaries += 1
        return report


def _remove(path: Path) -> int:
    """Delete a file or a whole folder; the bytes it held."""
    if path.is_dir() and not path.is_symlink():
        size = sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(path)
        return size
    size = path.lstat().st_size
    path.unlink()
    return size


def _version(row: Row) -> AdapterVersion:
    record, tags = row
    return AdapterVersion.from_dict(record, tags)
