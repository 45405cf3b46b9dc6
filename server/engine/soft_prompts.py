"""Prompt-tuning adapters as the engine uses them: a small tensor of virtual-token embeddings.

A soft prompt changes no weight of the model, so any number of them share one batch: the engine
prepends each row's embeddings to that row's prompt embeddings, exactly as PEFT's
``PeftModelForCausalLM`` does for one adapter. This module loads them from the registry into a
cache bounded by count and bytes (least recently used first out); prompts in use by a running
request are pinned and never evicted.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from adapterhub.adapter_folder import ADAPTER_WEIGHTS
from adapterhub.errors import AdapterBusy, InvalidAdapter

from .cache_stats import CacheStats

__all__ = ["SoftPrompt", "SoftPromptCache"]


@dataclass(frozen=True)
class SoftPrompt:
    """Loaded virtual-token embeddings of one adapter version, ``[num_virtual_tokens, hidden]``."""

    ref: str
    embeddings: Any
    nbytes: int

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class _Entry:
    prompt: SoftPrompt
    pins: int = 0


class SoftPromptCache:
    """Thread-safe LRU of soft prompts; ``acquire`` may load (call it off the engine thread)."""

    def __init__(self, registry: Any, *, dtype: Any, device: Any, max_loaded: int, max_bytes: int) -> None:
        self._registry = registry
        self._dtype = dtype
        self._device = device
        self._max_loaded = max_loaded
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def acquire(self, version: Any) -> SoftPrompt:
        """The prompt of ``version`` (an ``AdapterVersion``), loaded if needed and pinned until ``release``."""
        ref = version.ref
        while True:
            with self._lock:
                entry = self._entries.get(ref)
                if entry is not None:
                    entry.pins += 1
                    self._entries.move_to_end(ref)
                    self.stats.hits += 1
                    return entry.prompt
                waiting = self._loading.get(ref)
                if waiting is None:
                    self._loading[ref] = threading.Event()
                    self.stats.misses += 1
                    break
            waiting.wait()  # another thread is loading the same version: take its result
        try:
            started = time.perf_counter()
            prompt = self._load(version)
            with self._lock:
                self.stats.loads += 1
                seconds = time.perf_counter() - started
                self.stats.load_seconds += seconds
                self.stats.last_load_seconds = seconds
                self._entries[ref] = _Entry(prompt, pins=1)
                self._evict_over_budget()
            return prompt
        finally:
            with self._lock:
                self._loading.pop(ref).set()

    def release(self, prompt: SoftPrompt) -> None:
        with self._lock:
            entry = self._entries.get(prompt.ref)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1
            self._evict_over_budget()

    def unload(self, ref: str) -> bool:
        """Drop ``ref`` now; False when it is not loaded, ``AdapterBusy`` while a request uses it."""
        with self._lock:
            entry = self._entries.get(ref)
            if entry is None:
                return False
            if entry.pins:
                raise AdapterBusy(f"{ref} is in use by {entry.pins} running request(s)")
            del self._entries[ref]
            return True

    def is_loaded(self, ref: str) -> bool:
        with self._lock:
            return ref in self._entries

    def loaded(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"ref": ref, "adapter_type": "prompt_tuning", "bytes": e.prompt.nbytes, "in_use": e.pins}
                for ref, e in self._entries.items()
            ]

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.prompt.nbytes for e in self._entries.values())

    def _evict_over_budget(self) -> None:
        """Drop least recently used unpinned prompts until both bounds hold (pinned ones may overshoot)."""
        def over() -> bool:
            return (len(self._entries) > self._max_loaded
                    or sum(e.prompt.nbytes for e in self._entries.values()) > self._max_bytes)

        for ref in list(self._entries):
            if not over():
                return
            if self._entries[ref].pins == 0:
                del self._entries[ref]
                self.stats.evictions += 1

    def _load(self, version: Any) -> SoftPrompt:
        from safetensors.torch import load_file

        entry = version.file(ADAPTER_WEIGHTS)
        object_path = getattr(self._registry, "object_path", None)
        if object_path is not None:
            tensors = load_file(str(object_path(entry.sha256)))
        else:  # a remote registry: fetch the version's files (verified by digest) into a temporary folder
            with tempfile.TemporaryDirectory(prefix="adapterhub-prompt-") as tmp:
                self._registry.pull(version.ref, tmp)
                tensors = load_file(os.path.join(tmp, ADAPTER_WEIGHTS))
        emb = tensors.get("prompt_embeddings")
        if emb is None or emb.dim() != 2:
            raise InvalidAdapter(f"{version.ref}: no 2-d prompt_embeddings tensor")
        emb = emb.to(device=self._device, dtype=self._dtype).contiguous()
        return SoftPrompt(version.ref, emb, emb.numel() * emb.element_size())
