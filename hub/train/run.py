"""One training run as every front end starts it: check the name and the target registry, train,
evaluate, and push when asked. ``adapterhub train`` and ``adapterhub.train()`` both call
``run_training``, so they refuse the same input in the same order and push the same record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..refs import validate_name
from ..registry import AdapterVersion
from .config import TrainConfig
from .register import open_target_registry, push_trained
from .trainer import TrainResult, train_adapter

__all__ = ["TrainRun", "default_output", "run_training"]


@dataclass(frozen=True)
class TrainRun:
    """A finished run: what the trainer wrote (``result``) and the registry version, if pushed."""

    result: TrainResult
    pushed: AdapterVersion | None = None


def default_output(name: str) -> Path:
    """``./runs/NAME``: a run folder next to where the user works, found again by ``resume``."""
    return Path("runs") / name


def run_training(base: str, data: str | os.PathLike, config: TrainConfig, *, name: str, task: str,
                 eval_data: str | os.PathLike | None = None, output: str | os.PathLike | None = None,
                 push: bool = False, registry: Any = None, tags: Iterable[str] = (), description: str = "",
                 resume: bool = False, progress: bool = True, threads: int | None = None) -> TrainRun:
    """Train ``config`` on ``data`` and, with ``push``, store the adapter as the next version of ``name``.

    The name and (with ``push``) the registry are checked before the base is loaded, so a typo or
    an unreachable hub fails in seconds rather than after the run. ``registry`` is an open registry,
    a location, or None for the default.
    """
    validate_name(name)
    target = open_target_registry(registry, name) if push else None
    out_dir = Path(output) if output is not None else default_output(name)
    result = train_adapter(base, data, out_dir, config, eval_file=eval_data, resume=resume, progress=progress,
                           threads=threads)
    pushed = push_trained(result, name=name, task=task, registry=target, tags=tags,
                          description=description) if push else None
    return TrainRun(result, pushed)
