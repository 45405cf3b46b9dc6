"""Counters every adapter cache of the engine reports to ``/metrics`` (LoRA slots, soft prompts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CacheStats"]


@dataclass
class CacheStats:
    """Cache hits and misses, evictions, and time spent loading adapters."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    last_load_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "loads": self.loads,
                "load_seconds": round(self.load_seconds, 6), "last_load_seconds": round(self.last_load_seconds, 6)}
