"""Prompt-tuning adapters as the engine uses them: a small tensor of virtual-token embeddings.

A soft prompt changes no weight of the model, so any number of them share one batch: the scheduler
prepends each row's embeddings to that row's prompt embeddings, exactly as PEFT's
``PeftModelForCausalLM`` does for one adapter. They are kept in a pinned LRU bounded by count and
bytes that pinned prompts may overshoot (a prompt is a plain tensor, not a slot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapterhub.adapter_folder import ADAPTER_WEIGHTS
from adapterhub.errors import InvalidAdapter

from .cache_stats import CacheStats
from .pinned_lru import PinnedLRU
from .registry_files import AdapterFiles

if TYPE_CHECKING:
    import torch

    from adapterhub.registry import AdapterVersion
    from adapterhub.registry_protocol import Registry

__all__ = ["SoftPrompt", "SoftPromptCache"]


@dataclass(frozen=True)
class SoftPrompt:
    """Loaded virtual-token embeddings of one adapter version, ``[num_virtual_tokens, hidden]``."""

    ref: str
    embeddings: torch.Tensor
    nbytes: int
    digest: str  # the version's manifest digest: what its rows' cached prefixes are keyed by

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embeddings.shape[0])


class SoftPromptCache:
    """Thread-safe LRU of soft prompts; ``acquire`` may load (call it off the engine thread)."""

    def __init__(self, registry: Registry, *, dtype: torch.dtype, device: torch.device, max_loaded: int,
                 max_bytes: int) -> None:
        self._files = AdapterFiles(registry, prefix="adapterhub-prompts-")
        self._dtype = dtype
        self._device = device
        self._lru: PinnedLRU[SoftPrompt] = PinnedLRU(max_entries=max_loaded, max_bytes=max_bytes, elastic=True)

    @property
    def stats(self) -> CacheStats:
        return self._lru.stats

    def acquire(self, version: AdapterVersion) -> SoftPrompt:
        """The prompt of ``version``, loaded if needed and pinned until ``release``."""
        return self._lru.acquire(version.ref, version.ref, lambda: self._load(version))

    def release(self, prompt: SoftPrompt) -> None:
        self._lru.release(prompt.ref)

    def unload(self, ref: str) -> bool:
        """Drop ``ref`` now; False when it is not loaded, ``AdapterBusy`` while a request uses it."""
        return self._lru.remove(ref)

    def loaded(self) -> list[dict[str, Any]]:
        return [{"ref": e.key, "adapter_type": "prompt_tuning", "bytes": e.bytes, "in_use": e.pins}
                for e in self._lru.resident()]

    def _load(self, version: AdapterVersion) -> tuple[SoftPrompt, int]:
        from safetensors.torch import load_file

        [weights] = self._files.paths(version, ADAPTER_WEIGHTS)
        emb = load_file(str(weights)).get("prompt_embeddings")
        if emb is None or emb.dim() != 2:
            raise InvalidAdapter(f"{version.ref}: no 2-d prompt_embeddings tensor")
        emb = emb.to(device=self._device, dtype=self._dtype).contiguous()
        prompt = SoftPrompt(version.ref, emb, emb.numel() * emb.element_size(), version.digest)
        return prompt, prompt.nbytes
