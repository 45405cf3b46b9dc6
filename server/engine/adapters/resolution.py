"""A request's ``model`` -> the adapter it runs with, decided once: reference -> version -> servable here.

Every caller that turns a name into an adapter goes through ``AdapterResolver.resolve``: the
OpenAI routes, vLLM's served names, ``start_engine``'s preloads and ``EngineHandle.generate``,
evaluation (through the engine it is handed) and the Ray replicas. It reads the registry once and
decides, before any byte is loaded, whether the version can be served on this base
(``check_servable``: its kind, LoRA support, the base's fingerprint and shapes). What it returns, a
``Resolved``, is what ``Engine.submit`` pins into its cache entry, unchecked: the caches trust it,
and only the slot bank's load still reads each tensor's shape (a different check, which also covers
a version whose base could not be fingerprinted).

``/v1/models`` lists exactly the versions ``servable`` accepts, so a listed model always resolves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adapterhub.adapter_folder import PROMPT_TEMPLATE
from adapterhub.echo import echo
from adapterhub.errors import AdapterNotFound, IncompatibleBase, InvalidReference, UnsupportedAdapter
from adapterhub.peft_format import check_shapes_fit

if TYPE_CHECKING:
    from adapterhub.base_model import BaseInfo
    from adapterhub.prompt_template import PromptTemplate
    from adapterhub.registry import AdapterVersion
    from adapterhub.registry_protocol import Registry

    from .prompt_template_cache import PromptTemplateCache

__all__ = ["AdapterResolver", "Resolved", "check_compatible", "SERVED_TYPES"]

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


@dataclass(frozen=True)
class Resolved:
    """What a request's ``model`` names, checked: ``version`` (``None``: the bare base) and its kind.

    Made only by ``AdapterResolver.resolve``; ``Engine.submit`` and ``Engine.load_adapter`` take it
    as proof that the version may be served here."""

    version: AdapterVersion | None
    _templates: PromptTemplateCache | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        """``base``, ``lora``, ``prompt_tuning`` or ``prompt_template``."""
        return "base" if self.version is None else self.version.adapter_type

    @property
    def label(self) -> str:
        """How metrics name it: ``base``, or the version's ``name@N``."""
        return "base" if self.version is None else self.version.ref

    @property
    def virtual_tokens(self) -> int:
        """Positions its soft prompt adds in front of the prompt (0 for every other kind)."""
        if self.kind != "prompt_tuning":
            return 0
        return int(self.version.peft.get("num_virtual_tokens") or 0)

    def template(self) -> PromptTemplate | None:
        """The template a prompt-template version applies to the prompt text (read on first use,
        then cached); ``None`` for every other kind. A method, not a field: resolving a template to
        unload it must not read it."""
        if self.kind != PROMPT_TEMPLATE:
            return None
        return self._templates.get(self.version)


class AdapterResolver:
    """Resolves a request's ``model`` against one served base; thread-safe (it holds no state).

    Args:
        registry: where references resolve.
        base_name, base_info: the served base (``info`` may be ``None``: not inspectable).
        lora: whether this engine has LoRA slots.
        templates: the prompt-template cache a resolved template is read through.
    """

    def __init__(self, registry: Registry, *, base_name: str, base_info: BaseInfo | None, lora: bool,
                 templates: PromptTemplateCache) -> None:
        self.registry = registry
        self.base_name = base_name
        self.base_info = base_info
        self.lora = lora
        self._templates = templates

    def resolve(self, model: str | None) -> Resolved:
        """The adapter ``model`` names (the base for ``None``, ``""`` or the base's name), checked by
        ``check_servable``. Raises ``AdapterNotFound``, ``UnsupportedAdapter``, ``IncompatibleBase``."""
        if model in (None, "", self.base_name):
            return Resolved(None)
        try:
            version = self.registry.resolve(model)
        except InvalidReference as e:
            raise AdapterNotFound(f"model {echo(model)} does not exist: {e}") from e
        self.check_servable(version)
        return Resolved(version, self._templates)

    def check_servable(self, version: AdapterVersion) -> None:
        """The one rule for whether ``version`` can be served on this base: a served kind, LoRA
        slots for a LoRA, and the base it was registered for (``check_compatible``)."""
        if version.adapter_type not in SERVED_TYPES:
            raise UnsupportedAdapter(f"{version.ref}: adapter type {version.adapter_type} cannot be served")
        if version.adapter_type == "lora" and not self.lora:
            raise UnsupportedAdapter(f"{version.ref}: this server was started without LoRA support")
        check_compatible(version, self.base_info)

    def servable(self, version: AdapterVersion) -> bool:
        """``check_servable`` as a yes or no (what ``/v1/models`` lists)."""
        try:
            self.check_servable(version)
        except (UnsupportedAdapter, IncompatibleBase):
            return False
        return True
