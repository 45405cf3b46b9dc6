"""A shared index in PostgreSQL, for a hub whose processes run on several machines.

Same tables and queries as the embedded SQLite index (``sql.py``); text columns use the "C"
collation so names sort byte by byte as they do there. Writers of one adapter name serialise on a
transaction-scoped advisory lock keyed by the name (released by the server when the transaction
ends or the client dies), so versions stay contiguous however many processes push; reads run at
REPEATABLE READ so a lookup of several statements sees one state. One database (or one schema,
picked by ``options=-csearch_path=...`` in the URL) holds one registry's index.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from ..errors import RegistryCorrupt
from .sql import SqlIndex, Transaction

__all__ = ["PostgresIndex", "is_postgres_url", "redact"]

_SCHEMA_LOCK = 0x61646170  # advisory lock key while creating the tables ("adap")
CONNECT_TIMEOUT_S = 10


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class _PgTransaction(Transaction):
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def all(self, sql: str, *params: Any) -> list[tuple]:
        cur = self.conn.execute(sql.replace("?", "%s"), params)
        return cur.fetchall() if cur.description is not None else []

    def run(self, sql: str, *params: Any) -> None:
        self.conn.execute(sql.replace("?", "%s"), params)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self.conn.cursor().executemany(sql.replace("?", "%s"), rows)


class PostgresIndex(SqlIndex):
    text_type = 'TEXT COLLATE "C"'
    tag_agg = "string_agg(tag, ' ')"
    no_limit = "ALL"

    def __init__(self, url: str, *, location: str) -> None:
        super().__init__(location)
        self.url = url
        self._local = threading.local()
        self._schema_checked = False

    def describe(self) -> str:
        return redact(self.url)

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or self._local.pid != os.getpid():
            try:
                import psycopg
            except ImportError as e:
                raise RegistryCorrupt(
                    f"the index at {self.describe()} needs psycopg: pip install 'psycopg[binary]'"
                ) from e
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            except psycopg.Error as e:
                raise RegistryCorrupt(f"cannot reach the index at {self.describe()}: {_one_line(e)}") from e
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def transaction(self, *, write: bool, lock: str | None = None, check: bool = True) -> Iterator[Transaction]:
        import psycopg

        conn = self._conn()
        try:
            conn.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            tx = _PgTransaction(conn)
            if check and not self._schema_checked:
                self.check_schema(tx)
                self._schema_checked = True
            if lock is not None:
                tx.run("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", lock)
            yield tx
            conn.execute("COMMIT")
        except psycopg.Error as e:
            _rollback(conn)
            raise RegistryCorrupt(f"index at {self.describe()}: {_one_line(e)}") from e
        except BaseException:
            _rollback(conn)
            raise

    def exists(self) -> bool:
        with self.transaction(write=False, check=False) as tx:
            return tx.one("SELECT to_regclass('versions') IS NOT NULL AND to_regclass('meta') IS NOT NULL")[0]

    def create(self) -> None:
        with self.transaction(write=True, check=False) as tx:
            tx.run(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            for statement in self.schema():
                tx.run(statement)


def _one_line(error: Exception) -> str:
    """psycopg's messages span lines (server hints); errors here are one line."""
    return " ".join(str(error).split())


def _rollback(conn: Any) -> None:
    import psycopg

    with contextlib.suppress(psycopg.Error):
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
