"""The one cache of resident adapters: least recently used first out, never one a request still uses.

LoRA slots and soft prompts differ only in what an entry holds and in what a full cache does:

* a LoRA occupies one of a fixed number of slots, so a cache whose entries are all pinned makes a
  new adapter wait for a slot (``AdapterBusy`` after the timeout), and an adapter that would take
  the cache over its byte bound is refused (``elastic=False``): ``AdapterBusy`` while others in use
  hold the room, ``AdapterTooLarge`` when it exceeds the bound alone and never fits;
* a soft prompt is a plain tensor, so pinned prompts may take the cache over its bounds until their
  requests finish (``elastic=True``).

Loading runs outside the lock, in the caller's thread: a slow load stalls neither the engine loop
nor the threads asking for adapters already resident. Threads asking for an adapter another
thread is loading wait for that load instead of loading it twice.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from adapterhub.errors import AdapterBusy, AdapterInUse, AdapterTooLarge

from .cache_stats import CacheStats

__all__ = ["CacheEntry", "PinnedLRU"]

V = TypeVar("V")


@dataclass
class CacheEntry(Generic[V]):
    """One adapter in the cache; ``value`` is set once its load finished (``ready``)."""

    key: str
    label: str  # how messages name it: ``name@version``
    value: V | None = None
    bytes: int = 0
    pins: int = 0
    ready: bool = False
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)


class PinnedLRU(Generic[V]):
    """Thread-safe LRU bounded by count and bytes; ``acquire`` pins, ``release`` unpins.

    Args:
        max_entries: most adapters resident at once.
        max_bytes: most bytes resident at once (``None``: no byte bound).
        elastic: whether pinned entries may take the cache over its bounds (see the module).
        drop: frees what an entry holds when it leaves the cache (called with the lock held).
    """

    def __init__(self, *, max_entries: int, max_bytes: int | None, elastic: bool,
                 drop: Callable[[V], None] = lambda value: None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._elastic = elastic
        self._drop = drop
        self._entries: OrderedDict[str, CacheEntry[V]] = OrderedDict()  # least recently used first
        self._cond = threading.Condition()

    def acquire(self, key: str, label: str, load: Callable[[], tuple[V, int]], *, timeout: float = 0.0) -> V:
        """The value under ``key``, pinned; on a miss ``load()`` gives it and its size in bytes.

        Waits up to ``timeout`` s for room when the cache is full of pinned entries (not elastic).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                entry = self._entries.get(key)
                if entry is not None:
                    if entry.ready:
                        self.stats.hits += 1
                        return self._pin(entry)
                    self._cond.wait(1.0)  # another thread is loading it
                    continue
                if self._elastic or self._make_room():
                    break
                if time.monotonic() >= deadline:
                    raise AdapterBusy(
                        f"cannot load {label}: all {self.max_entries} adapter slots are in use by running requests"
                    )
                self._cond.wait(deadline - time.monotonic())
            entry = CacheEntry(key, label, pins=1)
            self._entries[key] = entry
            self.stats.misses += 1
        try:
            started = time.perf_counter()
            value, size = load()
            seconds = time.perf_counter() - started
        except BaseException:
            self._forget(entry)
            raise
        try:
            with self._cond:
                entry.value, entry.bytes = value, size
                self._shrink(keep=entry)
                entry.ready = True
                entry.loaded_at = time.time()
                self.stats.loads += 1
                self.stats.load_seconds += seconds
                self.stats.last_load_seconds = seconds
                self._cond.notify_all()
        except BaseException:
            self._forget(entry)
            raise
        return value

    def release(self, key: str) -> None:
        """Unpin an entry a request no longer needs; it stays resident until evicted."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None or entry.pins == 0:
                raise ValueError(f"{entry.label if entry else key} is not acquired")
            entry.pins -= 1
            entry.last_used = time.time()
            self._shrink()
            self._cond.notify_all()

    def remove(self, key: str) -> bool:
        """Drop ``key`` now; ``False`` if it is not resident, ``AdapterInUse`` while a request uses it."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if entry.pins or not entry.ready:
                raise AdapterInUse(f"{entry.label} is in use by {entry.pins} running request(s); unload it when they end")
            self._evict(entry, count=False)
            return True

    def key_of(self, label: str) -> str | None:
        """The key of the entry named ``label``, if any."""
        with self._cond:
            return next((e.key for e in self._entries.values() if e.label == label), None)

    def resident(self) -> list[CacheEntry[V]]:
        """Copies of the loaded entries, least recently used first."""
        with self._cond:
            return [copy.copy(e) for e in self._entries.values() if e.ready]

    # --- with the lock held ----------------------------------------------------------------------

    def _pin(self, entry: CacheEntry[V]) -> V:
        entry.pins += 1
        entry.last_used = time.time()
        self._entries.move_to_end(entry.key)
        return entry.value

    def _make_room(self) -> bool:
        """Room for one more entry, evicting the least recently used idle one if needed."""
        if len(self._entries) < self.max_entries:
            return True
        victim = next((e for e in self._entries.values() if e.ready and e.pins == 0), None)
        if victim is None:
            return False
        self._evict(victim)
        return True

    def _over(self, count: int, total: int) -> bool:
        return count > self.max_entries or (self.max_bytes is not None and total > self.max_bytes)

    def _shrink(self, keep: CacheEntry[V] | None = None) -> None:
        """Evict idle entries, least recently used first, until both bounds hold; when they cannot,
        refuse ``keep`` (the entry just loaded) unless the cache is elastic, before evicting
        anything for an entry that could never fit."""
        if keep is not None and not self._elastic and self.max_bytes is not None and keep.bytes > self.max_bytes:
            raise AdapterTooLarge(f"{keep.label} needs {keep.bytes} bytes, more than the server's whole "
                                  f"{self.max_bytes}-byte adapter memory bound (--max-adapter-memory)")
        counted = [e for e in self._entries.values() if e.ready or e is keep]
        count, total = len(counted), sum(e.bytes for e in counted)
        for e in [e for e in counted if e is not keep and e.pins == 0]:
            if not self._over(count, total):
                break
            count, total = count - 1, total - e.bytes
            self._evict(e)
        if keep is not None and not self._elastic and self._over(count, total):
            raise AdapterBusy(
                f"{keep.label} needs {keep.bytes} bytes; with the adapters in use that exceeds the "
                f"{self.max_bytes}-byte bound"
            )

    def _evict(self, entry: CacheEntry[V], *, count: bool = True) -> None:
        del self._entries[entry.key]
        if entry.value is not None:
            self._drop(entry.value)
        if count:
            self.stats.evictions += 1

    def _forget(self, entry: CacheEntry[V]) -> None:
        """Take out an entry whose load failed or was refused, and free what it loaded."""
        with self._cond:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            if entry.value is not None:
                self._drop(entry.value)
            self._cond.notify_all()
