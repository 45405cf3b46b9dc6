"""Which LoRA adapters sit in the batcher's slots: an LRU cache from registry references to slots.

A request names an adapter by reference (``name``, ``name:tag``, ``name@3``); ``acquire`` resolves it,
loads it into a free slot on a miss (evicting the least recently used adapter no request holds) and
pins it until ``release``. Adapters are keyed by their manifest digest, so ``name`` and ``name@3``
share one slot when they are the same version, and moving a tag loads the new version.

Compatibility with the base is decided before any byte is loaded:

1. the version must be a LoRA (soft prompts are served elsewhere) -> ``UnsupportedAdapter``;
2. when both the registry entry and the running base carry a base fingerprint (hash of weight
   names and shapes, see ``hub.base_model``), they must be equal -> ``IncompatibleBase``;
3. whatever the fingerprints say, ``LoraBatcher.load`` checks every tensor against the shape of the
   layer it targets before writing the slot, so an entry without a fingerprint (a base that could
   not be inspected at push time) is still checked by shape -> ``IncompatibleBase``.

Files come straight from a local registry's content-addressed store (no copy); a remote registry's
are pulled once into a private cache folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterhub.adapter_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from adapterhub.errors import AdapterBusy, AdapterNotFound, IncompatibleBase, UnsupportedAdapter

from .cache_stats import CacheStats
from .lora_batch import LoraBatcher

__all__ = ["AdapterSlots", "SlotHandle"]


@dataclass(frozen=True)
class SlotHandle:
    """A pinned adapter: the slot to give ``LoraBatcher.set_rows`` for the request's row."""

    name: str
    version: int
    digest: str
    slot: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class _Entry:
    name: str
    version: int
    digest: str
    slot: int
    bytes: int = 0
    pins: int = 0
    ready: bool = False
    failed: bool = False
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)

    def handle(self) -> SlotHandle:
        return SlotHandle(self.name, self.version, self.digest, self.slot)


class AdapterSlots:
    """LRU cache of adapters in slots, bounded by count and bytes; thread-safe.

    Args:
        batcher: the ``LoraBatcher`` whose slots this cache fills.
        registry: a ``LocalRegistry`` or ``RemoteRegistry`` the references resolve in.
        max_loaded: most adapters resident at once (at most ``batcher.max_slots``).
        max_bytes: most bytes of adapter weights resident at once (``None``: no byte bound).
    """

    def __init__(self, batcher: LoraBatcher, registry: Any, *, max_loaded: int, max_bytes: int | None = None) -> None:
        if not 1 <= max_loaded <= batcher.max_slots:
            raise ValueError(f"max_loaded must be between 1 and the batcher's {batcher.max_slots} slots")
        self.batcher = batcher
        self.registry = registry
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # digest -> entry, least recently used first
        self._cond = threading.Condition()
        self._cache_dir: Path | None = None

    # --- public --------------------------------------------------------------------------------

    def acquire(self, ref: str, *, timeout: float = 0.0) -> SlotHandle:
        """Pin ``ref``'s adapter in a slot, loading it on a miss; waits up to ``timeout`` s for a slot."""
        version = self.registry.resolve(ref)
        self._check_version(version)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                entry = self._entries.get(version.digest)
                if entry is not None:
                    if entry.ready:
                        return self._pin(entry, hit=True)
                    self._cond.wait(1.0)  # another thread is loading it: milliseconds
                    continue
                slot = self._free_slot()
                if slot is not None:
                    break
                if time.monotonic() >= deadline:
                    raise AdapterBusy(
                        f"cannot load {version.name}@{version.version}: all {self.max_loaded} adapter slots are "
                        "in use by running requests"
                    )
                self._cond.wait(deadline - time.monotonic())
            entry = _Entry(version.name, version.version, version.digest, slot, pins=1)
            self._entries[version.digest] = entry
            self.stats.misses += 1
        self._load(entry, version)
        return entry.handle()

    def release(self, handle: SlotHandle) -> None:
        """Unpin an adapter a request no longer needs; it stays resident until evicted."""
        with self._cond:
            entry = self._entries.get(handle.digest)
            if entry is None or entry.pins == 0:
                raise ValueError(f"{handle.ref} is not acquired")
            entry.pins -= 1
            entry.last_used = time.time()
            self._cond.notify_all()

    def unload(self, ref: str) -> bool:
        """Free the slot of ``ref``'s adapter; ``False`` if it was not loaded, ``AdapterBusy`` if in use."""
        digest = self._digest_of(ref)
        with self._cond:
            entry = self._entries.get(digest) if digest else next(
                (e for e in self._entries.values() if f"{e.name}@{e.version}" == ref), None)
            if entry is None:
                return False
            if entry.pins or not entry.ready:
                raise AdapterBusy(f"{entry.name}@{entry.version} is in use by {entry.pins} running request(s)")
            self._evict(entry, count=False)
            return True

    def loaded(self) -> list[dict[str, Any]]:
        """The resident adapters, least recently used first."""
        with self._cond:
            return [
                {"ref": f"{e.name}@{e.version}", "name": e.name, "version": e.version, "digest": "sha256:" + e.digest,
                 "slot": e.slot, "bytes": e.bytes, "in_use": e.pins, "loaded_at": e.loaded_at,
                 "last_used": e.last_used}
                for e in self._entries.values() if e.ready
            ]

    @property
    def resident_bytes(self) -> int:
        with self._cond:
            return sum(e.bytes for e in self._entries.values())

    # --- internals -----------------------------------------------------------------------------

    def _check_version(self, version: Any) -> None:
        if version.adapter_type != "lora":
            raise UnsupportedAdapter(f"{version.ref} is a {version.adapter_type} adapter, not a LoRA")
        info = self.batcher.loaded.info
        want = (version.base or {}).get("fingerprint")
        if want and info is not None and want != info.fingerprint:
            raise IncompatibleBase(
                f"{version.ref} was registered for base {version.base.get('name')} ({want[:19]}...), "
                f"this server runs {info.name} ({info.fingerprint[:19]}...), whose weights differ"
            )

    def _pin(self, entry: _Entry, *, hit: bool) -> SlotHandle:
        entry.pins += 1
        entry.last_used = time.time()
        self._entries.move_to_end(entry.digest)
        if hit:
            self.stats.hits += 1
        return entry.handle()

    def _free_slot(self) -> int | None:
        """A slot for a new adapter, evicting the least recently used idle one if needed (lock held)."""
        used = {e.slot for e in self._entries.values()}
        if len(used) >= self.max_loaded:
            victim = next((e for e in self._entries.values() if e.ready and e.pins == 0), None)
            if victim is None:
                return None
            self._evict(victim)
            used.discard(victim.slot)
        return next(s for s in range(self.batcher.max_slots) if s not in used)

    def _evict(self, entry: _Entry, *, count: bool = True) -> None:
        del self._entries[entry.digest]
        self.batcher.free(entry.slot)
        if count:
            self.stats.evictions += 1

    def _fit_bytes(self, keep: _Entry) -> None:
        """Evict idle adapters until the byte bound holds; refuse ``keep`` if it cannot (lock held)."""
        if self.max_bytes is None:
            return
        total = sum(e.bytes for e in self._entries.values())
        for e in [e for e in self._entries.values() if e is not keep and e.ready and e.pins == 0]:
            if total <= self.max_bytes:
                break
            total -= e.bytes
            self._evict(e)
        if total > self.max_bytes:
            raise AdapterBusy(
                f"{keep.name}@{keep.version} needs {keep.bytes} bytes; with the adapters in use that exceeds the "
                f"{self.max_bytes}-byte bound"
            )

    def _load(self, entry: _Entry, version: Any) -> None:
        """Registry files -> slot, outside the lock; on failure the slot is freed and the error raised."""
        try:
            config_path, weights_path = self._files(version)
            config = json.loads(Path(config_path).read_text(encoding="utf-8"))
            start = time.perf_counter()
            entry.bytes = self.batcher.load(entry.slot, config, str(weights_path))
            seconds = time.perf_counter() - start
            with self._cond:
                self._fit_bytes(entry)
                entry.ready = True
                entry.loaded_at = time.time()
                self.stats.loads += 1
                self.stats.load_seconds += seconds
                self.stats.last_load_seconds = seconds
                self._cond.notify_all()
        except BaseException:
            with self._cond:
                if self._entries.get(entry.digest) is entry:
                    del self._entries[entry.digest]
                self.batcher.free(entry.slot)
                self._cond.notify_all()
            raise

    def _files(self, version: Any) -> tuple[Path, Path]:
        """Paths of the version's config and weights: the local store's objects, or a pulled copy."""
        if hasattr(self.registry, "object_path"):
            return (self.registry.object_path(version.file(ADAPTER_CONFIG).sha256),
                    self.registry.object_path(version.file(ADAPTER_WEIGHTS).sha256))
        if self._cache_dir is None:
            self._cache_dir = Path(tempfile.mkdtemp(prefix="adapterhub-slots-"))
        folder = self._cache_dir / version.digest
        if not (folder / ADAPTER_WEIGHTS).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            self.registry.pull(f"{version.name}@sha256:{version.digest}", folder)
        return folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS

    def _digest_of(self, ref: str) -> str | None:
        """The digest ``ref`` resolves to; ``None`` if the registry no longer knows it."""
        try:
            return self.registry.resolve(ref).digest
        except AdapterNotFound:
            return None
