"""Advisory locks between processes that rewrite the same file (the index, the tokens file).

``flock`` locks belong to an open file description, so the kernel releases them when the holder
dies: a writer killed mid-update never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from .errors import ConcurrentModification

__all__ = ["file_lock", "EXCLUSIVE", "SHARED", "LOCK_TIMEOUT_S"]

EXCLUSIVE = fcntl.LOCK_EX
SHARED = fcntl.LOCK_SH
LOCK_TIMEOUT_S = 120.0


@contextlib.contextmanager
def file_lock(path: Path, mode: int = EXCLUSIVE, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold ``flock(mode)`` on ``path`` (created if missing) for the block; give up after ``timeout``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise ConcurrentModification(f"{path} is held by another process for over {timeout:.0f} s") from e
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock
