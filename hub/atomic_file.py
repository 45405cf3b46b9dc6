"""Replace a file or a folder whole: readers see the old content or the new, never a mix.

A small file goes to a unique temporary file beside the target, optionally fsynced, and lands with
``os.replace``; a writer that dies leaves at most the temporary (named ``.<stem>-*``), which the
registry's ``gc`` cleans up. A folder (a model, a merge's output) is built in a hidden temporary
folder beside the target and renamed into place only when complete, so a crash never leaves a
half model that later loads with missing weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["write_json_atomic", "staged_folder", "fsync_path"]


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder so that the names just created or renamed in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, doc: Any, *, mode: int = 0o644, durable: bool = False,
                      sort_keys: bool = False, indent: int | None = None) -> None:
    """Write ``doc`` as compact JSON to ``path`` atomically, with permissions ``mode``; ``durable``
    fsyncs the bytes before the rename and the folder after it.

    Compact and through ``json.dumps``, because only then does ``json`` use its C encoder (``dump``
    never does) unless ``indent`` asks for a document people read (a small manifest).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            separators = (",", ": ") if indent is not None else (",", ":")
            f.write(json.dumps(doc, separators=separators, sort_keys=sort_keys, indent=indent))
            f.write("\n")
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``out`` when the block finishes without error.

    An existing ``out`` is moved aside first and removed after the new one is in place (two
    renames: a folder cannot replace a non-empty folder in one). With ``keep_existing`` (a cache
    entry: every build of it is the same) an ``out`` that appeared meanwhile wins and the new copy
    is dropped, so a reader of the first copy never sees it vanish.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".incomplete", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if keep_existing:
            _rename_unless_present(tmp, out)
        elif out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rename_unless_present(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out`` unless another writer's ``out`` is there already (then drop ``tmp``)."""
    try:
        os.rename(tmp, out)  # fails on a non-empty folder, atomically: one of two racing writers wins
    except OSError:
        if not out.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
