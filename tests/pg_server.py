"""A throwaway PostgreSQL server for the shared-index tests and the scale benchmark.

``initdb`` a cluster in a fresh temporary folder, start it on a free port listening only on a
unix socket inside that folder, hand out a ``postgresql://`` URL, and remove it all afterwards.
PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` user and
its programs run through ``runuser``. ``unavailable()`` says why a server cannot be started here.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["unavailable", "postgres_server", "new_database"]


def _bin(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    return candidates[-1] if candidates else None


def _run_as() -> list[str]:
    """The prefix that runs a program as a user PostgreSQL accepts (not root)."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def unavailable() -> str | None:
    """Why no server can be started here (``None`` when one can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if _bin("initdb") is None or _bin("pg_ctl") is None:
        return "PostgreSQL is not installed (no initdb/pg_ctl; apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to start the server as 'postgres'"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A running server; yields the URL of its ``postgres`` database."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    folder = Path(tempfile.mkdtemp(prefix="adapterhub-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data, port = folder / "data", _free_port()
    as_user = _run_as()
    try:
        subprocess.run(as_user + [_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-locale",
                                  "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        options = f"-p {port} -k {folder} -c listen_addresses='' -c fsync=off -c max_connections=200"
        subprocess.run(as_user + [_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
                                  "-w", "-t", "60", "start"], check=True, capture_output=True)
        try:
            yield f"postgresql://postgres@/postgres?host={folder}&port={port}"
        finally:
            subprocess.run(as_user + [_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server and return its URL (one registry index each)."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.replace("/postgres?", f"/{name}?", 1)
