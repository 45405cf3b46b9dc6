"""The content-addressed object store: files named by their sha256, each stored once.

Writes go to a unique temporary file in the store, are hashed on the way in, and are renamed into
place only when complete; a process killed mid-write leaves at most a temporary file, never a
wrong object. Readers re-hash what they copy out, so a corrupted object is caught on pull.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import DigestMismatch, ObjectMissing

__all__ = ["BlobStore", "StoredObject", "copy_hashing", "sha256_file", "CHUNK"]

CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    digest: str  # hex, no "sha256:" prefix
    size: int
    reused: bool  # the object was already present: no bytes were written


def copy_hashing(src: BinaryIO, dst: BinaryIO | None) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (if given) in one pass, returning (sha256 hex, byte count)."""
    h = hashlib.sha256()
    n = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        got = src.readinto(view)
        if not got:
            break
        chunk = view[:got]
        h.update(chunk)
        if dst is not None:
            dst.write(chunk)
        n += got
    return h.hexdigest(), n


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return copy_hashing(f, None)[0]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Objects live at ``<root>/sha256/<first two hex>/<hex>``; temporaries under ``<root>/tmp``."""

    def __init__(self, root: str | os.PathLike, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def _tmp(self) -> tuple[BinaryIO, Path]:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="incoming-", dir=tmp_dir)
        return os.fdopen(fd, "wb"), Path(name)

    def put_stream(self, src: BinaryIO, expected: str | None = None) -> StoredObject:
        """Store bytes from ``src``; with ``expected``, refuse them unless their digest matches."""
        f, tmp = self._tmp()
        try:
            with f:
                digest, size = copy_hashing(src, f)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            if expected is not None and digest != expected:
                raise DigestMismatch(
                    f"content has sha256 {digest}, expected {expected}", expected=expected, actual=digest
                )
            return self._commit(tmp, digest, size)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, path: str | os.PathLike) -> StoredObject:
        with open(path, "rb") as src:
            return self.put_stream(src)

    def _commit(self, tmp: Path, digest: str, size: int) -> StoredObject:
        final = self.path(digest)
        if final.is_file():
            return StoredObject(digest, size, reused=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        if self.durable:
            _fsync_dir(final.parent)
        return StoredObject(digest, size, reused=False)

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError as e:
            raise ObjectMissing(f"object sha256:{digest} is missing from the store") from e

    def copy_out(self, digest: str, dst: BinaryIO) -> int:
        """Copy an object into ``dst``, raising ``DigestMismatch`` if its bytes no longer match."""
        with self.open(digest) as src:
            actual, size = copy_hashing(src, dst)
        if actual != digest:
            raise DigestMismatch(
                f"object sha256:{digest} is corrupted (its bytes hash to {actual})", expected=digest, actual=actual
            )
        return size

    def check(self, digest: str) -> str | None:
        """None if the object is present and intact, else a short description of the problem."""
        p = self.path(digest)
        if not p.is_file():
            return "missing"
        return None if sha256_file(p) == digest else "corrupted"

    def iter_digests(self) -> Iterator[str]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if sub.is_dir():
                for obj in sorted(sub.iterdir()):
                    yield obj.name

    def iter_temporaries(self) -> Iterator[Path]:
        tmp_dir = self.root / "tmp"
        if tmp_dir.is_dir():
            yield from sorted(tmp_dir.iterdir())

    def delete(self, digest: str) -> int:
        p = self.path(digest)
        size = p.stat().st_size
        p.unlink()
        return size
