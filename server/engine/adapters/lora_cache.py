"""Which LoRA adapters sit in the slot bank's slots: a pinned LRU from adapter versions to slots.

``acquire`` loads a version into a free slot on a miss (evicting the least recently used adapter no
request holds) and pins it until ``release``. Adapters are keyed by their manifest digest, so
``name`` and ``name@3`` share one slot when they are the same version, and moving a tag loads the
new version.

Compatibility with the base is decided before any byte is loaded, once per request: the version
reaching ``acquire`` was resolved (``resolution.AdapterResolver``: kind, LoRA support, the
registry's record of its base, fingerprint and implied shapes -> ``UnsupportedAdapter`` /
``IncompatibleBase``), and is not checked against the base again here. What stays here:

1. the version must be a LoRA (soft prompts are served elsewhere) -> ``UnsupportedAdapter``;
2. whatever the registry recorded, ``LoraSlotBank.load`` checks every tensor against the shape of
   the layer it targets before writing the slot, so an entry without a fingerprint (a base that
   could not be inspected at push time) is still checked by shape -> ``IncompatibleBase``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapterhub.adapter_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from adapterhub.errors import AdapterNotFound, UnsupportedAdapter
from adapterhub.peft_format import parse_adapter_config

from .cache_stats import CacheStats
from .pinned_lru import PinnedLRU
from .registry_files import AdapterFiles

if TYPE_CHECKING:
    from adapterhub.registry import AdapterVersion
    from adapterhub.registry_protocol import Registry

    from ..lora.slot_bank import LoraSlotBank

__all__ = ["LoraCache", "LoraSlot"]


@dataclass(frozen=True)
class LoraSlot:
    """A LoRA adapter resident in the bank: the slot to give ``LoraSlotBank.set_rows`` for its rows."""

    name: str
    version: int
    digest: str
    slot: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class LoraCache:
    """LRU cache of LoRA adapters in the bank's slots, bounded by count and bytes; thread-safe.

    Args:
        bank: the ``LoraSlotBank`` whose slots this cache fills.
        registry: where the versions' files are read from.
        max_loaded: most adapters resident at once (at most ``bank.max_slots``).
        max_bytes: most bytes of adapter weights resident at once (``None``: no byte bound).
    """

    def __init__(self, bank: LoraSlotBank, registry: Registry, *, max_loaded: int,
                 max_bytes: int | None = None) -> None:
        if not 1 <= max_loaded <= bank.max_slots:
            raise ValueError(f"max_loaded must be between 1 and the bank's {bank.max_slots} slots")
        self.bank = bank
        self.registry = registry
        self._files = AdapterFiles(registry, prefix="adapterhub-slots-")
        self._free_slots = set(range(bank.max_slots))
        self._slots_lock = threading.Lock()
        self._lru: PinnedLRU[LoraSlot] = PinnedLRU(max_entries=max_loaded, max_bytes=max_bytes, elastic=False,
                                                   drop=self._drop)

    @property
    def stats(self) -> CacheStats:
        return self._lru.stats

    def acquire(self, version: AdapterVersion, *, timeout: float = 0.0) -> LoraSlot:
        """Pin ``version`` (resolved: checked against the base) in a slot, loading it on a miss;
        waits up to ``timeout`` s for a slot."""
        if version.adapter_type != "lora":
            raise UnsupportedAdapter(f"{version.ref} is a {version.adapter_type} adapter, not a LoRA")
        return self._lru.acquire(version.digest, version.ref, lambda: self._load(version), timeout=timeout)

    def release(self, handle: LoraSlot) -> None:
        """Unpin an adapter a request no longer needs; it stays resident until evicted."""
        self._lru.release(handle.digest)

    def unload(self, ref: str) -> bool:
        """Free the slot of ``ref``'s adapter; ``False`` if it was not loaded, ``AdapterBusy`` if in use."""
        key = self._digest_of(ref) or self._lru.key_of(ref)
        return key is not None and self._lru.remove(key)

    def loaded(self) -> list[dict[str, Any]]:
        """The resident adapters, least recently used first."""
        return [
            {"ref": e.label, "adapter_type": "lora", "name": e.value.name, "version": e.value.version,
             "digest": "sha256:" + e.value.digest, "slot": e.value.slot, "bytes": e.bytes, "in_use": e.pins,
             "loaded_at": e.loaded_at, "last_used": e.last_used}
            for e in self._lru.resident()
        ]

    def _load(self, version: AdapterVersion) -> tuple[LoraSlot, int]:
        """Registry files -> a free slot (outside the cache's lock); on failure the slot stays free."""
        config_path, weights_path = self._files.paths(version, ADAPTER_CONFIG, ADAPTER_WEIGHTS)
        config = parse_adapter_config(json.loads(config_path.read_text(encoding="utf-8")), version.ref)
        with self._slots_lock:  # the cache holds at most max_loaded <= max_slots entries: one is free
            slot = min(self._free_slots)
            self._free_slots.discard(slot)
        handle = LoraSlot(version.name, version.version, version.digest, slot)
        try:
            return handle, self.bank.load(slot, config, str(weights_path))
        except BaseException:
            self._drop(handle)
            raise

    def _drop(self, handle: LoraSlot) -> None:
        self.bank.free(handle.slot)
        with self._slots_lock:
            self._free_slots.add(handle.slot)

    def _digest_of(self, ref: str) -> str | None:
        """The digest ``ref`` resolves to; ``None`` if the registry no longer knows it."""
        try:
            return self.registry.resolve(ref).digest
        except AdapterNotFound:
            return None
