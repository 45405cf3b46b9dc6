"""The multiplexed model id of a request: which adapter bytes it needs, whatever name it used.

``name``, ``name:prod`` and ``name@3`` for the same version map to one id,
``name@sha256:<digest>``, a reference the replica resolves back to exactly that version, so
they share one cache entry and moving a tag moves the traffic; a ``--lora-modules`` name maps to
the id of the version it serves. Anything that names no registry
adapter (the base, an unknown or malformed name, a body that is not JSON) gets no id: any
replica takes it, and the replica's app gives the same answer or error ``adapterhub serve`` would.
Resolutions are remembered briefly, so a hot adapter costs one index read per interval, not one
per request; a moved tag is followed within ``ttl_s``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Mapping

from adapterhub.errors import AdapterHubError

if TYPE_CHECKING:
    from adapterhub.registry_protocol import Registry

__all__ = ["AffinityKeys", "json_fields"]


def json_fields(body: bytes) -> dict[str, Any]:
    """A JSON object body's fields; ``{}`` for anything else (the replica's app then says what is wrong)."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _model_of(fields: dict[str, Any]) -> str | None:
    model = fields.get("model", fields.get("adapter"))
    return model if isinstance(model, str) else None


class AffinityKeys:
    """Maps request bodies to multiplexed model ids; thread-safe, bounded."""

    def __init__(self, registry: Registry, *, aliases: Mapping[str, str] | None = None, ttl_s: float = 2.0,
                 max_entries: int = 4096) -> None:
        self.registry = registry
        self.aliases = dict(aliases or {})  # --lora-modules: served name -> the reference it serves
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def for_fields(self, fields: dict[str, Any]) -> str:
        """The id for a parsed body's ``model`` (or ``adapter``, as ``/v1/adapters/load`` takes it)."""
        model = _model_of(fields)
        return "" if model is None else self.for_model(model)

    def cached(self, fields: dict[str, Any]) -> str | None:
        """The id for ``fields`` if it needs no index read (remembered and fresh); else ``None``."""
        model = _model_of(fields)
        return "" if model is None else self._fresh(model)

    def for_model(self, model: str) -> str:
        hit = self._fresh(model)
        if hit is not None:
            return hit
        now = time.monotonic()
        try:
            version = self.registry.resolve(self.aliases.get(model, model))
            key = f"{version.name}@sha256:{version.digest}"
        except (AdapterHubError, ValueError):
            key = ""
        with self._lock:
            self._cache[model] = (key, now + self.ttl_s)
            self._cache.move_to_end(model)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return key

    def _fresh(self, model: str) -> str | None:
        with self._lock:
            hit = self._cache.get(model)
            if hit is None or hit[1] <= time.monotonic():
                return None
            self._cache.move_to_end(model)
            return hit[0]
