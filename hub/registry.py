"""A local registry: the ``registry.json`` index plus the content-addressed store beside it.

Layout of a registry folder::

    registry.json        the index (schema_version, adapters -> versions and tags)
    objects/sha256/..    adapter files, named by their sha256 (identical files stored once)
    objects/tmp/         temporaries of writes in progress (a killed writer leaves them here)
    registry.lock        taken by writers of the index (flock: released when a process dies)

Every write of the index is read-modify-write under the lock and lands by ``os.replace`` of a
complete temporary file, so readers never see a partial index and a writer killed at any point
leaves the previous index in force. Objects are written before the index names them: a killed push
can leave unreferenced objects (``verify`` reports them, ``gc`` removes them), never an index entry
without its bytes.
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
from typing import Any, Iterable, Iterator, Mapping

from .adapter_folder import AdapterFolder, read_adapter_folder
from .atomic_file import write_json_atomic
from .base_model import check_adapter_fits, load_base_info
from .blobstore import BlobStore, StoredObject
from .errors import (
    AdapterNotFound,
    InvalidAdapter,
    InvalidName,
    ObjectMissing,
    RegistryCorrupt,
)
from .file_lock import EXCLUSIVE, SHARED, file_lock
from .pull_folder import open_pull_folder
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

INDEX_NAME = "registry.json"
SCHEMA_VERSION = 1
FSYNC_ENV = "ADAPTERHUB_FSYNC"


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


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
        raise AdapterNotFound(f"{self.ref} has no file {path!r}")

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


def _empty_index() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "adapters": {}}


def _check_text(value: str, what: str, limit: int = 10_000) -> str:
    if not isinstance(value, str) or len(value) > limit or any(c in value for c in "\x00\r"):
        raise InvalidName(f"invalid {what}: text of at most {limit} characters without NUL or CR")
    return value


def _check_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidName(f"invalid metric {k!r}={v!r}: metrics are name -> number")
        out[k] = v
    return out


class LocalRegistry:
    """A registry in a local folder (created on first write); implements ``Registry``."""

    def __init__(self, root: str | os.PathLike, *, durable: bool | None = None) -> None:
        """``durable`` (default: on unless ``$ADAPTERHUB_FSYNC`` is ``0``) fsyncs every object
        before the index names it and the index before it replaces the old one, so even a power
        loss cannot leave the index pointing at bytes that never reached the disk. A killed
        process is safe either way."""
        if durable is None:
            durable = os.environ.get(FSYNC_ENV, "1") != "0"
        root = Path(root)
        if root.name == INDEX_NAME:  # accept the index file itself as the location
            root = root.parent
        self.root = root
        self.index_path = root / INDEX_NAME
        self.store = BlobStore(root / "objects", durable=durable)
        self.durable = durable
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"LocalRegistry({str(self.root)!r})"

    @property
    def location(self) -> str:
        return str(self.root)

    # --- index I/O -----------------------------------------------------------------------------

    def _read_index(self) -> dict[str, Any]:
        """The current index; cached by (mtime, size, inode) so a long-lived server rereads only on change."""
        try:
            st = self.index_path.stat()
        except FileNotFoundError:
            return _empty_index()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        try:
            index = json.loads(self.index_path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RegistryCorrupt(f"{self.index_path}: not valid JSON ({e})") from e
        if not isinstance(index, dict) or not isinstance(index.get("adapters"), dict):
            raise RegistryCorrupt(f"{self.index_path}: not an adapterhub index")
        if index.get("schema_version") != SCHEMA_VERSION:
            raise RegistryCorrupt(
                f"{self.index_path}: schema_version {index.get('schema_version')!r} is not supported "
                f"(this adapterhub reads {SCHEMA_VERSION})"
            )
        self._cache = (key, index)
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        write_json_atomic(self.index_path, index, durable=self.durable, sort_keys=True)
        self._cache = None

    def _flock(self, name: str, mode: int) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / name, mode)

    @contextlib.contextmanager
    def _mutating(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write of the index under the writers' lock; the write happens only on success."""
        with self._flock("registry.lock", EXCLUSIVE):
            self._cache = None
            index = json.loads(json.dumps(self._read_index()))  # private copy: the cache stays intact
            yield index
            self._write_index(index)

    # --- lookups -------------------------------------------------------------------------------

    @staticmethod
    def _tags_of(entry: Mapping[str, Any], version: int) -> tuple[str, ...]:
        return tuple(sorted(t for t, v in entry.get("tags", {}).items() if v == version))

    def _entry(self, index: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        entry = index["adapters"].get(name)
        if entry is None or not entry.get("versions"):
            raise AdapterNotFound(f"no adapter named {name!r} in {self.location}")
        return entry

    def _resolve_in(self, index: Mapping[str, Any], ref: Reference) -> AdapterVersion:
        entry = self._entry(index, ref.name)
        versions = entry["versions"]
        if ref.version is not None:
            key = str(ref.version)
            if key not in versions:
                raise AdapterNotFound(f"{ref.name} has no version {ref.version} (versions: {_span(versions)})")
        elif ref.digest is not None:
            hits = [k for k, v in versions.items() if v["digest"].removeprefix("sha256:").startswith(ref.digest)]
            if not hits:
                raise AdapterNotFound(f"{ref.name} has no version with digest sha256:{ref.digest}")
            if len({versions[k]["digest"] for k in hits}) > 1:
                raise AdapterNotFound(f"digest prefix sha256:{ref.digest} is ambiguous for {ref.name}")
            key = max(hits, key=int)
        else:
            tags = entry.get("tags", {})
            if ref.tag not in tags:
                known = ", ".join(sorted(tags)) or "none"
                raise AdapterNotFound(f"{ref.name} has no tag {ref.tag!r} (tags: {known})")
            key = str(tags[ref.tag])
        return AdapterVersion.from_dict(versions[key], self._tags_of(entry, int(key)))

    def resolve(self, ref: str | Reference) -> AdapterVersion:
        """The version a reference points at now."""
        parsed = ref if isinstance(ref, Reference) else parse_reference(ref)
        return self._resolve_in(self._read_index(), parsed)

    def list(
        self,
        *,
        base: str | None = None,
        task: str | None = None,
        adapter_type: str | None = None,
        name: str | None = None,
    ) -> list[AdapterVersion]:
        """All versions matching every given filter, by name then version.

        ``base`` matches the base name as pushed or a prefix of its fingerprint.
        """
        out: list[AdapterVersion] = []
        index = self._read_index()
        for adapter_name in sorted(index["adapters"]):
            if name is not None and adapter_name != name:
                continue
            entry = index["adapters"][adapter_name]
            tags_by_version: dict[int, list[str]] = {}
            for t, v in entry.get("tags", {}).items():
                tags_by_version.setdefault(v, []).append(t)
            for key in sorted(entry["versions"], key=int):
                rec = entry["versions"][key]
                if task is not None and rec.get("task") != task:
                    continue
                if adapter_type is not None and rec.get("adapter_type") != adapter_type:
                    continue
                if base is not None and not _base_matches(rec.get("base") or {}, base):
                    continue
                out.append(AdapterVersion.from_dict(rec, tuple(sorted(tags_by_version.get(int(key), ())))))
        return out

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
        validate_name(name)
        tags = [validate_tag(t) for t in tags]
        _check_text(task, "task", 200)
        _check_text(description, "description")
        metrics = _check_metrics(metrics)
        self._read_index()  # an unreadable index fails the push before any object is stored
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
            with self._mutating() as index:
                entry = index["adapters"].setdefault(name, {"versions": {}, "tags": {}})
                version = max((int(k) for k in entry["versions"]), default=0) + 1
                record = replace(record, version=version)
                entry["versions"][str(version)] = record.to_dict()
                entry["tags"][LATEST] = version
                for t in tags:
                    entry["tags"][t] = version
        return replace(record, tags=tuple(sorted({LATEST, *tags})))

    def _base_record(self, adapter: AdapterFolder, base: str | None) -> dict[str, Any]:
        base_name = base or adapter.base_model
        if not base_name:
            raise InvalidAdapter(
                f"{adapter.path}: adapter_config.json names no base_model_name_or_path; pass the base explicitly"
            )
        revision = adapter.config.get("revision")
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
        with self._mutating() as index:
            target = self._resolve_in(index, parsed)
            index["adapters"][target.name]["tags"][tag] = target.version
            entry = index["adapters"][target.name]
            return replace(target, tags=self._tags_of(entry, target.version))

    def set_metrics(self, ref: str, metrics: Mapping[str, Any]) -> AdapterVersion:
        """Add or update metrics of a version (evaluation can finish after the push)."""
        metrics = _check_metrics(metrics)
        with self._mutating() as index:
            target = self._resolve_in(index, parse_reference(ref))
            rec = index["adapters"][target.name]["versions"][str(target.version)]
            rec["metrics"] = {**rec.get("metrics", {}), **metrics}
            return AdapterVersion.from_dict(rec, target.tags)

    def remove(self, ref: str, *, all_versions: bool = False) -> list[AdapterVersion]:
        """Remove one version, or every version of a name with ``all_versions``.

        A bare name without ``all_versions`` is refused: it would silently mean "latest".
        Objects stay in the store until ``gc``.
        """
        parsed = parse_reference(ref)
        with self._mutating() as index:
            if all_versions:
                if not parsed.bare:
                    raise InvalidName("--all takes a bare adapter name, not a version, tag or digest")
                entry = self._entry(index, parsed.name)
                removed = [AdapterVersion.from_dict(v) for _, v in sorted(entry["versions"].items(), key=lambda kv: int(kv[0]))]
                del index["adapters"][parsed.name]
                return removed
            if parsed.bare:
                raise InvalidName(
                    f"say which version of {parsed.name} to remove ({parsed.name}@N, {parsed.name}:tag), "
                    "or pass --all to remove every version"
                )
            target = self._resolve_in(index, parsed)
            entry = index["adapters"][target.name]
            del entry["versions"][str(target.version)]
            entry["tags"] = {t: v for t, v in entry["tags"].items() if v != target.version}
            if not entry["versions"]:
                del index["adapters"][target.name]
            elif LATEST not in entry["tags"] or entry["tags"][LATEST] == target.version:
                entry["tags"][LATEST] = max(int(k) for k in entry["versions"])
            return [target]

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
        index = self._read_index()
        referenced: dict[str, list[str]] = {}
        for name, entry in index["adapters"].items():
            for key, rec in entry["versions"].items():
                report.checked_versions += 1
                files = [FileEntry(f["path"], f["sha256"], int(f["size"])) for f in rec["files"]]
                if manifest_digest(files) != rec["digest"].removeprefix("sha256:"):
                    report.problems.append(f"{name}@{key}: manifest digest does not match its files")
                for f in files:
                    referenced.setdefault(f.sha256, []).append(f"{name}@{key}/{f.path}")
            for tag, v in entry.get("tags", {}).items():
                if str(v) not in entry["versions"]:
                    report.problems.append(f"{name}:{tag} points at missing version {v}")
        for digest, users in sorted(referenced.items()):
            report.checked_objects += 1
            problem = self.store.check(digest)
            if problem:
                report.problems.append(f"object sha256:{digest} {problem} (used by {', '.join(users)})")
        report.orphans = [d for d in self.store.iter_digests() if d not in referenced]
        report.temporaries = [str(p) for p in self._temporaries()]
        return report

    def _temporaries(self) -> list[Path]:
        """Partial files of writers that died: object uploads and index rewrites."""
        index_temps = sorted(self.root.glob(".registry-*.json")) if self.root.is_dir() else []
        return list(self.store.iter_temporaries()) + index_temps

    def gc(self) -> GcReport:
        """Remove objects no version references, and temporaries of writers that died."""
        report = GcReport()
        with self._flock("objects.lock", EXCLUSIVE), self._flock("registry.lock", EXCLUSIVE):
            self._cache = None
            index = self._read_index()
            referenced = {
                f["sha256"]
                for entry in index["adapters"].values()
                for rec in entry["versions"].values()
                for f in rec["files"]
            }
            for digest in list(self.store.iter_digests()):
                if digest not in referenced:
                    report.freed_bytes += self.store.delete(digest)
                    report.removed_objects += 1
            for tmp in list(self._temporaries()):
                report.freed_bytes += tmp.stat().st_size
                tmp.unlink()
                report.removed_temporaries += 1
        return report


def _span(versions: Mapping[str, Any]) -> str:
    nums = sorted(int(k) for k in versions)
    return ", ".join(str(n) for n in nums) if len(nums) <= 8 else f"{nums[0]}..{nums[-1]}"


def _base_matches(base: Mapping[str, Any], query: str) -> bool:
    if base.get("name") == query:
        return True
    fp = base.get("fingerprint") or ""
    q = query if query.startswith("sha256:") else "sha256:" + query
    return len(q) >= len("sha256:") + 6 and fp.startswith(q)

