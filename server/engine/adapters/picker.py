"""Where a resolved request's adapter is kept resident: a LoRA slot, a soft prompt, a template or nothing.

The HTTP thread has resolved ``model`` once (``resolution``: the version, checked against the
base). ``pin`` then makes that same version resident, in the caller's thread, and records it on
the request: a LoRA as the slot its rows use (``LoraCache``), a prompt-tuning adapter as the
embeddings its prompt starts with (``SoftPromptCache``), nothing for the base. ``unpin`` lets the
cache evict it again. Nothing here checks the version against the base again.

A prompt template (``prompt_template``) has no parameters: its text was rendered into the prompt
before tokenizing (``adapterhub.prompt_encoding``), and the request then runs as a base row
(nothing is pinned).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterhub.adapter_folder import PROMPT_TEMPLATE
from adapterhub.errors import UnsupportedAdapter

from ..compute_threads import single_threaded

if TYPE_CHECKING:
    from adapterhub.registry import AdapterVersion

    from ..request import GenerationRequest
    from .lora_cache import LoraCache
    from .prompt_template_cache import PromptTemplateCache
    from .soft_prompt_cache import SoftPromptCache

__all__ = ["AdapterPicker"]


class AdapterPicker:
    """Keeps a resolved request's adapter resident while the request runs; thread-safe.

    Args:
        soft_prompts: the prompt-tuning cache.
        prompt_templates: the prompt-template cache.
        lora_slots: the LoRA cache, or ``None`` for a server started without LoRA support.
        slot_wait_s: how long a request waits for a LoRA slot while every slot is pinned by
            running requests (``AdapterBusy`` after that).
    """

    def __init__(self, *, soft_prompts: SoftPromptCache, prompt_templates: PromptTemplateCache,
                 lora_slots: LoraCache | None, slot_wait_s: float) -> None:
        self.soft_prompts = soft_prompts
        self.prompt_templates = prompt_templates
        self.lora_slots = lora_slots
        self.slot_wait_s = slot_wait_s

    def pin(self, request: GenerationRequest) -> None:
        """Make the request's adapter resident (loading it here, in the caller's thread) and record it."""
        version = request.adapter
        if version is None or version.adapter_type == PROMPT_TEMPLATE:  # a template's row is a base row
            return
        with single_threaded():  # a load runs torch here, outside the engine loop
            if version.adapter_type == "prompt_tuning":
                request.soft_prompt = self.soft_prompts.acquire(version)
            else:
                request.lora = self._lora().acquire(version, timeout=self.slot_wait_s)

    def unpin(self, request: GenerationRequest) -> None:
        if request.soft_prompt is not None:
            self.soft_prompts.release(request.soft_prompt)
            request.soft_prompt = None
        if request.lora is not None:
            self._lora().release(request.lora)
            request.lora = None

    def load(self, version: AdapterVersion) -> None:
        """Make ``version`` resident without running a request."""
        if version.adapter_type == PROMPT_TEMPLATE:
            self.prompt_templates.get(version)
            return
        with single_threaded():
            if version.adapter_type == "prompt_tuning":
                self.soft_prompts.release(self.soft_prompts.acquire(version))
            else:
                lora = self._lora()
                lora.release(lora.acquire(version, timeout=self.slot_wait_s))

    def unload(self, ref: str) -> bool:
        """Free a resident adapter now; False when it is not resident, ``AdapterBusy`` while in use."""
        if self.soft_prompts.unload(ref) or self.prompt_templates.unload(ref):
            return True
        with single_threaded():  # zeroing the slot runs torch here, outside the engine loop
            return bool(self.lora_slots is not None and self.lora_slots.unload(ref))

    def loaded(self) -> list[dict[str, Any]]:
        loras = self.lora_slots.loaded() if self.lora_slots is not None else []
        return self.soft_prompts.loaded() + self.prompt_templates.loaded() + loras

    def _lora(self) -> LoraCache:
        if self.lora_slots is None:
            raise UnsupportedAdapter("this server was started without LoRA support")
        return self.lora_slots
