"""The embedded index: one SQLite file in WAL mode beside the objects.

WAL lets readers go on while a writer commits, and a process killed mid-commit leaves the last
committed state (the log is replayed or ignored on the next open). Writers take SQLite's write
lock up front (``BEGIN IMMEDIATE``) and wait for it up to ``busy_timeout``, which replaces the
registry's old file lock. With ``durable`` every commit is fsynced (``synchronous=FULL``);
without, a commit survives a killed process but not a power cut.

Connections are per thread and per process (a forked child opens its own), as SQLite requires.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..atomic_file import fsync_path
from ..errors import ConcurrentModification, DiskFull, RegistryCorrupt, disk_full, full_disk
from ..file_lock import LOCK_TIMEOUT_S
from .sql import SqlIndex, Transaction

__all__ = ["SqliteIndex", "TEMP_PREFIX"]

TEMP_PREFIX = ".index-"  # an index being built (a first write, a migration); gc removes leftovers
INDEX_MODE = 0o644  # as registry.json (objects are 0o444)
_SQLITE_IOERR = 10  # the primary code of every "disk I/O error"


class _SqliteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def all(self, sql: str, *params: Any) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def run(self, sql: str, *params: Any) -> None:
        self.conn.execute(sql, params)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)


class SqliteIndex(SqlIndex):
    def __init__(self, path: Path, *, location: str, durable: bool) -> None:
        super().__init__(location)
        self.path = path
        self.durable = durable
        self._local = threading.local()
        self._schema_checked = False

    def describe(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def _connect(self, path: Path, mode: str) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            try:
                conn = self._connect(self.path, "rw")
            except sqlite3.Error as e:
                raise self._full(e, "cannot open the index") or RegistryCorrupt(
                    f"{self.path}: cannot open the index ({e})") from e
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def transaction(self, *, write: bool, lock: str | None = None) -> Iterator[Transaction]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            tx = _SqliteTransaction(conn)
            if not self._schema_checked:
                self.check_schema(tx)
                self._schema_checked = True
            yield tx
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            _rollback(conn)
            full = self._full(e, f"{self.path}: cannot {'write' if write else 'read'} the index")
            if full is not None:
                raise full from e
            if "locked" in str(e) or "busy" in str(e):
                raise ConcurrentModification(f"{self.path} is held by another writer for over {LOCK_TIMEOUT_S:.0f} s") from e
            raise RegistryCorrupt(f"{self.path}: {e}") from e
        except sqlite3.DatabaseError as e:
            _rollback(conn)
            raise RegistryCorrupt(f"{self.path}: not a readable index ({e})") from e
        except BaseException:
            _rollback(conn)
            raise

    def _full(self, error: sqlite3.Error, what: str) -> DiskFull | None:
        """``DiskFull`` for SQLite's "database or disk is full", and for its I/O errors while the
        disk has no free block: a reader in WAL mode must write its shared-memory file, and on a
        full disk SQLite reports only "disk I/O error"."""
        full = disk_full(error, what)
        if full is None and getattr(error, "sqlite_errorcode", 0) & 0xFF == _SQLITE_IOERR:
            with contextlib.suppress(OSError):
                if os.statvfs(self.path.parent).f_bavail == 0:
                    full = full_disk(what)
        return full

    def create(self) -> None:
        """Build the file under a temporary name and link it into place: readers never meet a
        file without its tables, and of several processes creating it at once one wins."""
        if self.exists():
            return
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".sqlite", dir=self.path.parent)
        os.close(fd)
        try:
            self.build(Path(tmp))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path)
                if self.durable:
                    fsync_path(self.path.parent)
        finally:
            os.unlink(tmp)

    def build(self, path: Path, fill: Callable[["SqliteIndex"], None] | None = None) -> None:
        """Create the tables in the (empty) file ``path`` in WAL mode, then run ``fill(index)`` on it.

        ``path`` comes from ``mkstemp`` (owner-only); the index gets the manifest's permissions, so
        whoever could read the registry's JSON index can read its SQLite one."""
        os.chmod(path, INDEX_MODE)
        conn = self._connect(path, "rwc")
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in self.schema():
                conn.execute(statement)
            conn.execute("COMMIT")
        finally:
            conn.close()
        if fill is not None:
            staged = SqliteIndex(path, location=self.location, durable=self.durable)
            try:
                fill(staged)
            finally:
                staged.close()
        if self.durable:
            fsync_path(path)

    def close(self) -> None:
        """Close this thread's connection (checkpoints the log when it is the last one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
