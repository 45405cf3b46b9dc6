"""Where a request picks its adapter: model name -> registry version -> LoRA slot, soft prompt, template or base.

An HTTP thread calls ``resolve`` with the request's ``model`` (the base's name, or an adapter
reference: ``name``, ``name:tag``, ``name@3``): the version is looked up once, its type checked,
and it is refused before any byte is loaded when it was made for another base. ``pin`` then makes
that same version resident, in the caller's thread, and records it on the request: a LoRA as the
slot its rows use (``LoraCache``), a prompt-tuning adapter as the embeddings its prompt starts with
(``SoftPromptCache``), nothing for the base. ``unpin`` lets the cache evict it again.

A prompt template (``prompt_template``) has no parameters: the HTTP layer asks ``prompt_template``
for it and rewrites the prompt text before tokenizing, and the request then runs as a base row
(nothing is pinned). It is tied to the base it was pushed for by the fingerprint, as the others are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterhub.adapter_folder import PROMPT_TEMPLATE
from adapterhub.echo import echo
from adapterhub.errors import AdapterNotFound, IncompatibleBase, InvalidReference, UnsupportedAdapter
from adapterhub.peft_format import check_shapes_fit

from ..compute_threads import single_threaded
from .prompt_template_cache import PromptTemplateCache

if TYPE_CHECKING:
    from adapterhub.base_model import BaseInfo
    from adapterhub.prompt_template import PromptTemplate
    from adapterhub.registry import AdapterVersion
    from adapterhub.registry_protocol import Registry

    from ..request import GenerationRequest
    from .lora_cache import LoraCache
    from .soft_prompt_cache import SoftPromptCache

__all__ = ["AdapterPicker", "check_compatible", "SERVED_TYPES"]

SERVED_TYPES = ("lora", "prompt_tuning", PROMPT_TEMPLATE)


def check_compatible(version: AdapterVersion, info: BaseInfo | None) -> None:
    """Refuse an adapter made for another base before any of its bytes are used.

    The registry records the base's fingerprint (architecture + every weight shape) and the shape
    each adapter tensor implies; both are compared with the served base (``info``; ``None`` when
    the base could not be inspected, and then the slot bank still checks shapes at load).
    """
    if info is None:
        return
    recorded = version.base.get("fingerprint")
    if recorded and recorded != info.fingerprint:
        raise IncompatibleBase(
            f"{version.ref} was registered for base {version.base.get('name')} ({recorded[:19]}...), "
            f"this server runs {info.name} ({info.fingerprint[:19]}...), whose weights differ"
        )
    check_shapes_fit(version.base.get("shapes") or {}, info.weights, base=info.name, hidden_size=info.hidden_size,
                     where=version.ref)


class AdapterPicker:
    """Resolves a request's adapter and keeps it resident while the request runs; thread-safe.

    Args:
        registry: where references resolve.
        base_name, base_info: the served base (``info`` may be ``None``: not inspectable).
        soft_prompts: the prompt-tuning cache.
        lora_slots: the LoRA cache, or ``None`` for a server started without LoRA support.
        slot_wait_s: how long a request waits for a LoRA slot while every slot is pinned by
            running requests (``AdapterBusy`` after that).
        prompt_templates: the prompt-template cache (default: a new one over ``registry``).
    """

    def __init__(self, registry: Registry, *, base_name: str, base_info: BaseInfo | None,
                 soft_prompts: SoftPromptCache, lora_slots: LoraCache | None, slot_wait_s: float,
                 prompt_templates: PromptTemplateCache | None = None) -> None:
        self.registry = registry
        self.base_name = base_name
        self.base_info = base_info
        self.soft_prompts = soft_prompts
        self.lora_slots = lora_slots
        self.slot_wait_s = slot_wait_s
        self.prompt_templates = prompt_templates or PromptTemplateCache(registry)

    def resolve(self, model: str | None) -> AdapterVersion | None:
        """The adapter version ``model`` names, checked against the base; ``None`` for the base itself."""
        if model in (None, "", self.base_name):
            return None
        try:
            version = self.registry.resolve(model)
        except InvalidReference as e:
            raise AdapterNotFound(f"model {echo(model)} does not exist: {e}") from e
        if version.adapter_type not in SERVED_TYPES:
            raise UnsupportedAdapter(f"{version.ref}: adapter type {version.adapter_type} cannot be served")
        if version.adapter_type == "lora" and self.lora_slots is None:
            raise UnsupportedAdapter(f"{version.ref}: this server was started without LoRA support")
        check_compatible(version, self.base_info)
        return version

    @staticmethod
    def virtual_tokens(version: AdapterVersion | None) -> int:
        """Positions a version's soft prompt adds in front of the prompt (0 for LoRA and the base)."""
        if version is None or version.adapter_type != "prompt_tuning":
            return 0
        return int(version.peft.get("num_virtual_tokens") or 0)

    def prompt_template(self, version: AdapterVersion | None) -> PromptTemplate | None:
        """The template a prompt-template version applies to the prompt text (read once, then cached);
        ``None`` for every other kind."""
        if version is None or version.adapter_type != PROMPT_TEMPLATE:
            return None
        return self.prompt_templates.get(version)

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
