"""Replace a small file whole: readers see the old content or the new, never a mix.

The content goes to a unique temporary file beside the target, optionally fsynced, and lands with
``os.replace``; a writer that dies leaves at most the temporary (named ``.<stem>-*``), which the
registry's ``gc`` cleans up.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic"]


def write_json_atomic(path: Path, doc: Any, *, mode: int = 0o644, durable: bool = False,
                      sort_keys: bool = False) -> None:
    """Write ``doc`` as indented JSON to ``path`` atomically, with permissions ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=sort_keys)
            f.write("\n")
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
