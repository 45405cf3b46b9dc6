"""adapterhub: keep, share, merge, train and serve PEFT adapters for one base model.

The public Python API (``docs/python-api.md``)::

    import adapterhub
    v = adapterhub.push("my-lora", name="support", task="support")

    from adapterhub.server import start_engine   # serving: the server package, over this library
    with start_engine(base, quantize="none") as engine:
        engine.generate("Hello", adapter="support")

This package is also the library the front ends (``adapterhub.cli``, ``adapterhub.server``) call;
nothing here imports click, flask or ``adapterhub.server`` (it describes serving in
``serving_config`` and leaves running it to the server). Importing it loads no torch, transformers, peft or numpy
(the CLI starts in a fraction of a second): the types below that live with heavy modules load on
first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import api
from .api import *  # noqa: F403 (the functions and types listed in api.__all__)
from .errors import AdapterHubError
from .registry import AdapterVersion, LocalRegistry

if TYPE_CHECKING:
    from .merge import MergeOptions, MergeResult
    from .remote import RemoteRegistry
    from .tinybase import build_tiny_base
    from .train.config import TrainConfig
    from .train.run import TrainRun

__all__ = [
    *api.__all__,
    "build_tiny_base",
    "LocalRegistry",
    "RemoteRegistry",
    "AdapterVersion",
    "AdapterHubError",
    "MergeOptions",
    "MergeResult",
    "TrainConfig",
    "TrainRun",
]

# Public names whose modules import numpy or an HTTP client: loaded on first access (PEP 562).
_LAZY = {
    "MergeOptions": ".merge",
    "MergeResult": ".merge",
    "RemoteRegistry": ".remote",
    "build_tiny_base": ".tinybase",
    "TrainConfig": ".train.config",
    "TrainRun": ".train.run",
}


# Public names that moved out of the library (it never imports the server): where they are now.
_MOVED = {"start_engine": "adapterhub.server", "EngineHandle": "adapterhub.server"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        raise AttributeError(f"adapterhub.{name} moved to {_MOVED[name]}: from {_MOVED[name]} import {name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
