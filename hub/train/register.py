"""Store a trained adapter in a registry with its metrics, its training record and its lineage."""

from __future__ import annotations

from typing import Any, Iterable

from ..location import as_registry
from ..registry import AdapterVersion
from .trainer import TrainResult

__all__ = ["open_target_registry", "push_trained"]


def open_target_registry(location: Any, name: str) -> Any:
    """Open the registry a run will push ``name`` to and list that name's versions once, before any
    training: an unreachable hub or a refused token is reported in seconds, not after the run."""
    registry = as_registry(location)
    registry.list(name=name)
    return registry


def push_trained(result: TrainResult, *, name: str, task: str, registry: Any = None, tags: Iterable[str] = (),
                 description: str = "") -> AdapterVersion:
    """Push ``result.adapter_dir`` to ``registry`` (an open registry, a location, or None for the default).

    The entry carries the evaluation metrics, the training settings with the sha256 of the data
    (``training``) and ``lineage: [{"base": ...}]`` naming what the adapter was trained on.
    """
    registry = as_registry(registry)
    lineage = [{"base": result.base, "relation": "trained", "data_sha256": result.training["data"]["train_sha256"]}]
    return registry.push(result.adapter_dir, name=name, task=task, base=result.base, tags=tags,
                         description=description, metrics=result.metrics, lineage=lineage,
                         training=result.training)
