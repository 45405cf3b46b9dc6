"""The per-user cache folder everything adapterhub can rebuild lives in: ``$XDG_CACHE_HOME/adapterhub``.

Compiled kernels, the tiny default base and the Hugging Face copies of GGUF bases are all derived
from something else, so they go where the XDG convention puts disposable files (``~/.cache`` when
``$XDG_CACHE_HOME`` is unset); deleting the folder only costs rebuilding them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/adapterhub/<parts...>`` (``~/.cache/adapterhub/...``), read from the
    environment at each call so a test or a service can point it elsewhere. Not created here."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache, "adapterhub", *parts)
