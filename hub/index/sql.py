"""The index's tables and queries, written once for every SQL engine (SQLite, PostgreSQL).

A row per version holds the full record as JSON text, exactly as the registry wrote it, with the
fields people filter on copied beside it into indexed columns; tags are rows of their own, and the
distinct bases pushed so far sit in a small table of their own, so a ``--base`` filter becomes an
equality on indexed columns whatever the registry's size. Every list orders by (name, version),
and every filter's index ends in (name, version), so a page of 50 reads about 50 rows.

An engine supplies connections and transactions (``transaction``); everything else lives here.
Writes to one adapter name are serialised (SQLite's single writer, PostgreSQL's advisory lock on
the name), so the next version number is always the previous maximum plus one.
"""

from __future__ import annotations

import abc
import contextlib
import json
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..echo import echo
from ..errors import AdapterNotFound, InvalidName, ParentMoved, RegistryCorrupt
from ..refs import LATEST, Reference

__all__ = ["SqlIndex", "Query", "Row", "Transaction", "INDEX_SCHEMA_VERSION", "record_json"]

INDEX_SCHEMA_VERSION = 2
SCAN_BATCH = 5000
MAX_COUNT = 2**62  # limits and offsets beyond any registry's size, within the engines' 64-bit integers

# (record as written, tags pointing at it, sorted)
Row = tuple[dict[str, Any], tuple[str, ...]]


def record_json(record: Mapping[str, Any]) -> str:
    """The record's stored text: sorted keys, as the JSON index wrote it, so output stays identical;
    standard JSON only (``registry.record_bounds`` refuses NaN first, this is the backstop)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Query:
    """Filters and a page of ``list``; ``after`` is a (name, version) cursor: rows strictly after it."""

    name: str | None = None
    task: str | None = None
    adapter_type: str | None = None
    base: str | None = None
    tag: str | None = None
    limit: int | None = None
    offset: int = 0
    after: tuple[str, int] | None = None


class Transaction(abc.ABC):
    """One open transaction; SQL uses ``?`` placeholders whatever the engine."""

    @abc.abstractmethod
    def all(self, sql: str, *params: Any) -> list[tuple]: ...

    @abc.abstractmethod
    def run(self, sql: str, *params: Any) -> None: ...

    @abc.abstractmethod
    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def one(self, sql: str, *params: Any) -> tuple | None:
        rows = self.all(sql, *params)
        return rows[0] if rows else None


class SqlIndex(abc.ABC):
    """Versions and tags of one registry in SQL tables; the engine subclasses say how to connect."""

    text_type = "TEXT"  # column type of names, tags and text: must compare byte by byte
    tag_agg = "group_concat(tag, ' ')"  # aggregate joining the tags of one version
    no_limit = "-1"  # what LIMIT takes for "no limit" (an OFFSET needs a LIMIT in SQLite)

    def __init__(self, location: str) -> None:
        self.location = location  # where the registry is, as messages name it

    @abc.abstractmethod
    def transaction(self, *, write: bool, lock: str | None = None) -> contextlib.AbstractContextManager[Transaction]:
        """A transaction; a write one with ``lock`` excludes other writers of that adapter name."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether the tables have been created (a registry nobody pushed to has none)."""

    @abc.abstractmethod
    def create(self) -> None:
        """Create the tables if missing; safe to call from many processes at once."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the index lives, for messages (no password)."""

    # --- schema --------------------------------------------------------------------------------

    def schema(self) -> list[str]:
        t = self.text_type
        return [
            f"CREATE TABLE IF NOT EXISTS meta (key {t} PRIMARY KEY, value {t} NOT NULL)",
            f"""CREATE TABLE IF NOT EXISTS versions (
                name {t} NOT NULL, version INTEGER NOT NULL, digest {t} NOT NULL,
                adapter_type {t} NOT NULL, task {t} NOT NULL, base_name {t} NOT NULL,
                base_fingerprint {t} NOT NULL, created {t} NOT NULL, record {t} NOT NULL,
                PRIMARY KEY (name, version))""",
            "CREATE INDEX IF NOT EXISTS versions_task ON versions (task, name, version)",
            "CREATE INDEX IF NOT EXISTS versions_type ON versions (adapter_type, name, version)",
            "CREATE INDEX IF NOT EXISTS versions_base ON versions (base_name, base_fingerprint, name, version)",
            "CREATE INDEX IF NOT EXISTS versions_fingerprint ON versions (base_fingerprint, name, version)",
            "CREATE INDEX IF NOT EXISTS versions_created ON versions (created)",
            "CREATE INDEX IF NOT EXISTS versions_digest ON versions (digest)",
            f"""CREATE TABLE IF NOT EXISTS tags (name {t} NOT NULL, tag {t} NOT NULL, version INTEGER NOT NULL,
                PRIMARY KEY (name, tag))""",
            "CREATE INDEX IF NOT EXISTS tags_version ON tags (name, version)",
            "CREATE INDEX IF NOT EXISTS tags_tag ON tags (tag, name, version)",
            f"CREATE TABLE IF NOT EXISTS bases (name {t} NOT NULL, fingerprint {t} NOT NULL, PRIMARY KEY (name, fingerprint))",
            f"INSERT INTO meta (key, value) VALUES ('schema_version', '{INDEX_SCHEMA_VERSION}') ON CONFLICT DO NOTHING",
        ]

    def check_schema(self, tx: Transaction) -> None:
        row = tx.one("SELECT value FROM meta WHERE key = 'schema_version'")
        if row is None or row[0] != str(INDEX_SCHEMA_VERSION):
            found = row[0] if row else "none"
            raise RegistryCorrupt(
                f"{self.describe()}: index schema_version {found} is not supported "
                f"(this adapterhub reads {INDEX_SCHEMA_VERSION})"
            )

    # --- reads ---------------------------------------------------------------------------------

    def _tags_sql(self) -> str:
        return f"(SELECT {self.tag_agg} FROM tags t WHERE t.name = v.name AND t.version = v.version)"

    def _row(self, record: str, tags: str | None) -> Row:
        return json.loads(record), tuple(sorted(tags.split(" "))) if tags else ()

    def resolve(self, ref: Reference) -> Row:
        with self.transaction(write=False) as tx:
            return self._resolve(tx, ref)

    def _resolve(self, tx: Transaction, ref: Reference) -> Row:
        select = f"SELECT record, {self._tags_sql()} FROM versions v WHERE v.name = ? AND v.version = ?"
        if ref.version is not None:
            version = ref.version
        elif ref.digest is not None:
            hits = tx.all("SELECT version, digest FROM versions WHERE name = ? AND substr(digest, 1, ?) = ?",
                          ref.name, len(ref.digest), ref.digest)
            if not hits:
                self._require_name(tx, ref.name)
                raise AdapterNotFound(f"{ref.name} has no version with digest sha256:{ref.digest}")
            if len({d for _, d in hits}) > 1:
                raise AdapterNotFound(f"digest prefix sha256:{ref.digest} is ambiguous for {ref.name}")
            version = max(v for v, _ in hits)
        else:
            row = tx.one("SELECT version FROM tags WHERE name = ? AND tag = ?", ref.name, ref.tag)
            if row is None:
                self._require_name(tx, ref.name)
                known = ", ".join(sorted(t for (t,) in tx.all("SELECT tag FROM tags WHERE name = ?", ref.name)))
                raise AdapterNotFound(f"{ref.name} has no tag {echo(ref.tag)} (tags: {known or 'none'})")
            version = row[0]
        found = tx.one(select, ref.name, version)
        if found is None:
            self._require_name(tx, ref.name)
            raise AdapterNotFound(f"{ref.name} has no version {version} (versions: {self._span(tx, ref.name)})")
        return self._row(*found)

    def _require_name(self, tx: Transaction, name: str) -> None:
        if tx.one("SELECT 1 FROM versions WHERE name = ? LIMIT 1", name) is None:
            raise AdapterNotFound(f"no adapter named {echo(name)} in {self.location}")

    @staticmethod
    def _span(tx: Transaction, name: str) -> str:
        first, last, count = tx.one("SELECT min(version), max(version), count(*) FROM versions WHERE name = ?", name)
        if count > 8:
            return f"{first}..{last}"
        return ", ".join(str(v) for (v,) in tx.all("SELECT version FROM versions WHERE name = ? ORDER BY version", name))

    def list(self, q: Query) -> list[Row]:
        """The versions matching ``q``, by name then version; one page when ``q.limit`` is set."""
        if q.limit is not None and q.limit < 0 or q.offset < 0:
            raise InvalidName("limit and offset are counts: 0 or more")
        with self.transaction(write=False) as tx:
            where: list[str] = []
            params: list[Any] = []
            join = ""
            if q.tag is not None:
                join = "JOIN tags g ON g.name = v.name AND g.version = v.version AND g.tag = ?"
                params.append(q.tag)
            for column, value in (("v.name", q.name), ("v.task", q.task), ("v.adapter_type", q.adapter_type)):
                if value is not None:
                    where.append(f"{column} = ?")
                    params.append(value)
            if q.base is not None:
                bases = self._bases_matching(tx, q.base)
                if not bases:
                    return []
                where.append("(" + " OR ".join(["(v.base_name = ? AND v.base_fingerprint = ?)"] * len(bases)) + ")")
                params += [x for pair in bases for x in pair]
            if q.after is not None:
                where.append("(v.name > ? OR (v.name = ? AND v.version > ?))")
                params += [q.after[0], q.after[0], q.after[1]]
            sql = f"SELECT v.record, {self._tags_sql()} FROM versions v {join}"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY v.name, v.version"
            if q.limit is not None or q.offset:
                limit = str(min(int(q.limit), MAX_COUNT)) if q.limit is not None else self.no_limit
                sql += f" LIMIT {limit} OFFSET {min(int(q.offset), MAX_COUNT)}"
            return [self._row(*r) for r in tx.all(sql, *params)]

    @staticmethod
    def _bases_matching(tx: Transaction, query: str) -> list[tuple[str, str]]:
        """The (name, fingerprint) pairs pushed so far that ``query`` names: the base name as pushed,
        or a prefix of at least 6 hex digits of the fingerprint."""
        prefix = query if query.startswith("sha256:") else "sha256:" + query
        if len(prefix) >= len("sha256:") + 6:
            return tx.all("SELECT name, fingerprint FROM bases WHERE name = ? OR substr(fingerprint, 1, ?) = ?",
                          query, len(prefix), prefix)
        return tx.all("SELECT name, fingerprint FROM bases WHERE name = ?", query)

    def scan(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """Every (name, version, record), in batches: memory stays flat however many there are."""
        after: tuple[str, int] | None = None
        while True:
            with self.transaction(write=False) as tx:
                if after is None:
                    rows = tx.all(f"SELECT name, version, record FROM versions ORDER BY name, version LIMIT {SCAN_BATCH}")
                else:
                    rows = tx.all("SELECT name, version, record FROM versions WHERE name > ? OR (name = ? AND version > ?) "
                                  f"ORDER BY name, version LIMIT {SCAN_BATCH}", after[0], after[0], after[1])
            for name, version, record in rows:
                yield name, version, json.loads(record)
            if len(rows) < SCAN_BATCH:
                return
            after = (rows[-1][0], rows[-1][1])

    def dangling_tags(self) -> list[tuple[str, str, int]]:
        with self.transaction(write=False) as tx:
            return tx.all("SELECT t.name, t.tag, t.version FROM tags t LEFT JOIN versions v "
                          "ON v.name = t.name AND v.version = t.version WHERE v.name IS NULL ORDER BY t.name, t.tag")

    # --- writes --------------------------------------------------------------------------------

    def add(self, name: str, build: Callable[[int], dict[str, Any]], tags: Iterable[str], *,
            on_latest: int | None | EllipsisType = ...) -> Row:
        """Record ``build(next version number)`` as the next version of ``name`` and tag it.

        With ``on_latest`` (a version number, or ``None`` for a name without versions), only while
        ``latest`` still points there, else ``ParentMoved``: the check and the write are one
        transaction under the name's lock, so no other writer can land in between."""
        tags = tuple(sorted({LATEST, *tags}))
        with self.transaction(write=True, lock=name) as tx:
            if on_latest is not ...:
                found = tx.one("SELECT version FROM tags WHERE name = ? AND tag = ?", name, LATEST)
                if (found[0] if found else None) != on_latest:
                    now = f"{name}@{found[0]}" if found else "no version"
                    raise ParentMoved(f"{name} changed meanwhile: its latest is {now}, not the version this write "
                                      "builds on")
            (latest,) = tx.one("SELECT max(version) FROM versions WHERE name = ?", name)
            record = build((latest or 0) + 1)
            self._insert(tx, [record])
            tx.many(self._set_tag_sql(), [(name, t, record["version"]) for t in tags])
        return record, tags

    def _insert(self, tx: Transaction, records: Sequence[Mapping[str, Any]]) -> None:
        columns = [_columns(r) for r in records]
        tx.many(
            "INSERT INTO versions (name, version, digest, adapter_type, task, base_name, base_fingerprint, "
            "created, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            columns,
        )
        bases = {(c[5], c[6]) for c in columns}
        tx.many("INSERT INTO bases (name, fingerprint) VALUES (?, ?) ON CONFLICT DO NOTHING", sorted(bases))

    @staticmethod
    def _set_tag_sql() -> str:
        return ("INSERT INTO tags (name, tag, version) VALUES (?, ?, ?) "
                "ON CONFLICT (name, tag) DO UPDATE SET version = excluded.version")

    def _tags_of(self, tx: Transaction, name: str, version: int) -> tuple[str, ...]:
        return tuple(sorted(t for (t,) in tx.all("SELECT tag FROM tags WHERE name = ? AND version = ?", name, version)))

    def tag(self, ref: Reference, tag: str) -> Row:
        with self.transaction(write=True, lock=ref.name) as tx:
            record, _ = self._resolve(tx, ref)
            tx.run(self._set_tag_sql(), record["name"], tag, record["version"])
            return record, self._tags_of(tx, record["name"], record["version"])

    def untag(self, name: str, tag: str, version: int) -> bool:
        """Remove ``name:tag`` if it still points at ``version``; False when it has moved meanwhile."""
        with self.transaction(write=True, lock=name) as tx:
            if tx.one("SELECT 1 FROM tags WHERE name = ? AND tag = ? AND version = ?", name, tag, version) is None:
                return False
            tx.run("DELETE FROM tags WHERE name = ? AND tag = ? AND version = ?", name, tag, version)
            return True

    def update(self, ref: Reference, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Row:
        """Replace the record ``ref`` resolves to by ``change(record)`` (its filtered fields stay)."""
        with self.transaction(write=True, lock=ref.name) as tx:
            record, tags = self._resolve(tx, ref)
            record = change(record)
            tx.run("UPDATE versions SET record = ? WHERE name = ? AND version = ?",
                   record_json(record), record["name"], record["version"])
            return record, tags

    def remove(self, ref: Reference, *, all_versions: bool) -> list[Row]:
        with self.transaction(write=True, lock=ref.name) as tx:
            if all_versions:
                rows = tx.all("SELECT record FROM versions WHERE name = ? ORDER BY version", ref.name)
                if not rows:
                    raise AdapterNotFound(f"no adapter named {echo(ref.name)} in {self.location}")
                tx.run("DELETE FROM versions WHERE name = ?", ref.name)
                tx.run("DELETE FROM tags WHERE name = ?", ref.name)
                return [(json.loads(r), ()) for (r,) in rows]
            record, tags = self._resolve(tx, ref)
            name, version = record["name"], record["version"]
            tx.run("DELETE FROM versions WHERE name = ? AND version = ?", name, version)
            tx.run("DELETE FROM tags WHERE name = ? AND version = ?", name, version)
            (latest,) = tx.one("SELECT max(version) FROM versions WHERE name = ?", name)
            if latest is not None and tx.one("SELECT 1 FROM tags WHERE name = ? AND tag = ?", name, LATEST) is None:
                tx.run(self._set_tag_sql(), name, LATEST, latest)
            return [(record, tags)]

    def load(self, records: Sequence[Mapping[str, Any]], tags: Sequence[tuple[str, str, int]]) -> None:
        """Fill an empty index in one transaction (a migration): all of it lands or none. An index
        holding exactly these rows already is left as it is: a migration killed after this commit,
        before the manifest named the index, runs again to the end."""
        with self.transaction(write=True) as tx:
            if tx.one("SELECT 1 FROM versions LIMIT 1") is not None:
                held = tx.all("SELECT record FROM versions ORDER BY name, version")
                held_tags = tx.all("SELECT name, tag, version FROM tags ORDER BY name, tag")
                if [r for (r,) in held] == [record_json(r) for r in records] and \
                        [tuple(t) for t in held_tags] == sorted(tags):
                    return
                raise RegistryCorrupt(f"{self.describe()} already holds other versions; a migration needs an empty index")
            batch: list[Mapping[str, Any]] = []
            for record in records:
                batch.append(record)
                if len(batch) == SCAN_BATCH:
                    self._insert(tx, batch)
                    batch = []
            self._insert(tx, batch)
            tx.many(self._set_tag_sql(), list(tags))


def _columns(record: Mapping[str, Any]) -> tuple:
    base = record.get("base") or {}
    return (
        record["name"],
        int(record["version"]),
        str(record["digest"]).removeprefix("sha256:"),
        record["adapter_type"],
        record.get("task", ""),
        base.get("name") or "",
        base.get("fingerprint") or "",
        record.get("created", ""),
        record_json(record),
    )
