"""Open a file only if it is a regular file named directly, never through a symbolic link.

What a push stores is downloadable by anyone who may read the registry, so a link in an adapter
folder (``README.md -> /etc/passwd``) must not publish its target, and a FIFO or device must not
hang or feed a push. Checking the open descriptor (``O_NOFOLLOW``, then ``fstat``) rather than
the path first leaves no window for the file to be swapped between the check and the read;
``O_NONBLOCK`` keeps opening a FIFO from waiting for a writer.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import InvalidAdapter

__all__ = ["NOT_REGULAR", "open_regular", "read_regular", "check_regular"]

NOT_REGULAR = "adapterhub reads only regular files inside an adapter folder, never links or special files"


def _refusal(path: Path, what: str) -> InvalidAdapter:
    return InvalidAdapter(f"{path}: {what}; {NOT_REGULAR} (replace it with a copy of the file)")


def check_regular(path: str | os.PathLike) -> bool:
    """True if ``path`` is a regular file, False if nothing is there; ``InvalidAdapter`` for a link
    (even one to a regular file), a folder, a FIFO, a socket or a device."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise _refusal(p, "is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _refusal(p, "is not a regular file")
    return True


def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of ``path``, refused (``InvalidAdapter``) unless a regular file."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if os.path.islink(p):
            raise _refusal(p, "is a symbolic link") from None
        raise InvalidAdapter(f"{p}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refusal(p, "is not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_regular(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The whole file, refused with a one-line error when over ``limit`` bytes (``what`` names it)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise InvalidAdapter(f"{path}: {what} is {size} bytes, over the limit of {limit} bytes")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidAdapter(f"{path}: {what} is over the limit of {limit} bytes")
    return data
