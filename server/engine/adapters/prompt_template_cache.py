"""Prompt templates as the server uses them: the parsed ``prompt_template.json`` of a version, kept resident.

A template changes the prompt's text, not the model: the HTTP layer applies it before tokenizing
and the engine runs the request as a base row, in the same batch as LoRA and soft-prompt rows.
What is kept is a few kilobytes per version, so the cache is bounded by count and bytes only to
keep a flood of distinct templates from growing without end; nothing is pinned while a request
runs (the text was rendered before it was queued).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterhub.adapter_folder import PROMPT_TEMPLATE
from adapterhub.prompt_template import PROMPT_TEMPLATE_FILE, PromptTemplate, load_prompt_template

from .cache_stats import CacheStats
from .pinned_lru import PinnedLRU
from .registry_files import AdapterFiles

if TYPE_CHECKING:
    from adapterhub.registry import AdapterVersion
    from adapterhub.registry_protocol import Registry

__all__ = ["PromptTemplateCache"]

DEFAULT_MAX_TEMPLATES = 1024
DEFAULT_MAX_TEMPLATE_BYTES = 64 << 20


class PromptTemplateCache:
    """Thread-safe LRU of parsed templates; ``get`` may read the registry (call it off the engine thread)."""

    def __init__(self, registry: Registry, *, max_loaded: int = DEFAULT_MAX_TEMPLATES,
                 max_bytes: int = DEFAULT_MAX_TEMPLATE_BYTES) -> None:
        self._files = AdapterFiles(registry, prefix="adapterhub-templates-")
        self._lru: PinnedLRU[PromptTemplate] = PinnedLRU(max_entries=max_loaded, max_bytes=max_bytes, elastic=True)

    @property
    def stats(self) -> CacheStats:
        return self._lru.stats

    def get(self, version: AdapterVersion) -> PromptTemplate:
        """The template of ``version``, read and validated on first use."""
        template = self._lru.acquire(version.ref, version.ref, lambda: self._load(version))
        self._lru.release(version.ref)
        return template

    def unload(self, ref: str) -> bool:
        return self._lru.remove(ref)

    def loaded(self) -> list[dict[str, Any]]:
        return [{"ref": e.key, "adapter_type": PROMPT_TEMPLATE, "bytes": e.bytes, "in_use": e.pins}
                for e in self._lru.resident()]

    def _load(self, version: AdapterVersion) -> tuple[PromptTemplate, int]:
        [path] = self._files.paths(version, PROMPT_TEMPLATE_FILE)
        return load_prompt_template(path), version.file(PROMPT_TEMPLATE_FILE).size
