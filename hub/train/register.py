"""Store a trained adapter in a registry with its metrics, its training record and its lineage."""

from __future__ import annotations

import os
from typing import Any, Iterable

from ..location import open_registry
from ..registry import AdapterVersion
from .trainer import TrainResult

__all__ = ["open_target_registry", "push_trained"]


def open_target_registry(location: Any, name: str) -> Any:
    """Open the registry a run will push ``name`` to and list that name's versions once, before any
    training: an unreachable hub or a refused token is reported in seconds, not after the run."""
    registry = open_registry(location) if location is None or isinstance(location, (str, os.PathLike)) else location
    registry.list(name=name)
    return registry


def push_trained(result: TrainResult, *, name: str, task: str, registry: Any = None, tags: Iterable[str] = (),
                 description: str = "") -> AdapterVersion:
    """Push ``result.adapter_dir`` to ``registry`` (an open registry, a location, or None for the default).

    The entry carries the evaluation metrics, the training settings with the sha256 of the data
    (``training``) and ``lineage: [{"base": ...}]`` naming what the adapter was trained on.
    """
    if registry is None or isinstance(registry, (str, os.PathLike)):
        registry = open_registry(registry)
    lineage = [{"base": result.base, "relation": "trained", "data_sha256": result.training["data"]["train_sha256"]}]
    return registry.push(result.adapter_dir, name=name, task=task, base=result.base, tags=tags,
                         description=description, metrics=result.metrics, lineage=lineage,
                         training=result.training)
