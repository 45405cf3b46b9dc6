"""The output folder of a pull, checked the same way whichever registry the files come from.

A pull never overwrites a file that holds other bytes unless forced, and never writes into a path
that is a file; a file that already holds the entry's exact bytes is no clash, so pulling the same
version twice is a no-op.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .blobstore import sha256_file
from .errors import InvalidName

if TYPE_CHECKING:
    from .registry import FileEntry

__all__ = ["open_pull_folder"]


def _holds(path: Path, entry: FileEntry) -> bool:
    """Whether an existing file already holds exactly this entry's bytes."""
    return path.is_file() and path.stat().st_size == entry.size and sha256_file(path) == entry.sha256


def open_pull_folder(out_dir: str | os.PathLike, files: Iterable[FileEntry], *, force: bool) -> tuple[Path, bool]:
    """Create ``out_dir`` for ``files`` after checking nothing there would be lost.

    Returns the folder and whether this call created it (a failed pull removes only what it made).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidName(f"{out} exists and is not a folder")
    if not force:
        clashes = [f.path for f in files if (out / f.path).exists() and not _holds(out / f.path, f)]
        if clashes:
            raise InvalidName(f"{out} already has {', '.join(clashes)} (use --force to overwrite)")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return out, created
