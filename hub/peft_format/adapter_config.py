"""``adapter_config.json`` parsed once into typed settings, handed on instead of the raw mapping.

``parse_adapter_config`` checks the file as the registry does (the peft_type adapterhub knows, and
every setting the index records in type and range: ``config_values``) and returns an
``AdapterConfig``: what a LoRA's scale, layout and targets are (``LoraSettings``) or how many
virtual tokens a soft prompt has (``PromptTuningSettings``). The whole mapping stays in ``raw``:
the variants table looks for settings adapterhub never computes with (``megatron_config``...),
and the index records the file's own words. Like PEFT's ``LoraConfig``, only frozen: a parsed
config is a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..echo import echo
from ..errors import InvalidAdapter, UnsupportedAdapter
from .config_values import config_problem
from .scaling import DEFAULT_LORA_ALPHA, pattern_value

__all__ = ["ADAPTER_CONFIG", "ADAPTER_TYPES", "AdapterConfig", "LoraSettings", "PromptTuningSettings",
           "parse_adapter_config"]

ADAPTER_CONFIG = "adapter_config.json"
# peft_type -> the adapter type the registry records.
ADAPTER_TYPES = {"LORA": "lora", "PROMPT_TUNING": "prompt_tuning"}


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA's settings (PEFT's ``LoraConfig`` names and defaults).

    Args:
        r: the rank (``None`` where the file leaves it out: a folder is refused for it).
        lora_alpha: the scale's numerator (PEFT's default 8).
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        target_modules: module names, or one pattern (``all-linear``); ``None`` when unsaid.
        rank_pattern, alpha_pattern: per-module rank and alpha, first matching pattern wins.
        fan_in_fan_out: the base stores these layers ``in x out`` (GPT-2's ``Conv1D``).
    """

    r: int | None = None
    lora_alpha: float = DEFAULT_LORA_ALPHA
    use_rslora: bool = False
    target_modules: tuple[str, ...] | str | None = None
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    fan_in_fan_out: bool = False

    def scale(self, module: str, rank: int) -> float:
        """What PEFT multiplies ``B @ A`` by for ``module`` (a path such as ``model.layers.0.q_proj``),
        ``rank`` being the rank of its stored pair (``LoraLayer.update_layer``)."""
        alpha = pattern_value(self.alpha_pattern, module, self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


@dataclass(frozen=True)
class PromptTuningSettings:
    """A soft prompt's settings: ``num_virtual_tokens`` rows per transformer submodule."""

    num_virtual_tokens: int | None = None
    num_transformer_submodules: int = 1
    token_dim: int | None = None


@dataclass(frozen=True)
class AdapterConfig:
    """One ``adapter_config.json``: its kind, what it names, and the settings of its kind."""

    peft_type: str  # as PEFT wrote it, upper-cased
    adapter_type: str  # lora | prompt_tuning
    raw: Mapping[str, Any] = field(repr=False)  # the file's every setting
    base_model: str | None = None
    revision: str | None = None
    task_type: str | None = None
    lora: LoraSettings | None = None
    prompt_tuning: PromptTuningSettings | None = None


def _present(raw: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The settings PEFT wrote a value for (it writes null for unset options)."""
    return {k: raw[k] for k in names if raw.get(k) is not None}


def parse_adapter_config(raw: Mapping[str, Any], where: object) -> AdapterConfig:
    """``raw`` (the file's JSON object) as an ``AdapterConfig``; ``where`` names it in errors.

    Raises ``InvalidAdapter`` for a config without a peft_type or with a setting out of type or
    range, ``UnsupportedAdapter`` for a peft_type adapterhub does not take (one line each)."""
    peft_type = raw.get("peft_type")
    if not isinstance(peft_type, str):
        raise InvalidAdapter(f"{where}: {ADAPTER_CONFIG} has no peft_type")
    kind = ADAPTER_TYPES.get(peft_type.upper())
    if kind is None:
        supported = ", ".join(sorted(ADAPTER_TYPES))
        raise UnsupportedAdapter(f"{where}: peft_type {echo(peft_type)} is not supported (supported: {supported})")
    problem = config_problem(raw, kind)
    if problem is not None:
        raise InvalidAdapter(f"{where}: {ADAPTER_CONFIG}: {problem}")
    lora = prompt = None
    if kind == "lora":
        values = _present(raw, ("r", "lora_alpha", "use_rslora", "target_modules", "rank_pattern", "alpha_pattern",
                                "fan_in_fan_out"))
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        lora = LoraSettings(**values)
    else:
        prompt = PromptTuningSettings(**_present(raw, ("num_virtual_tokens", "num_transformer_submodules",
                                                       "token_dim")))
    return AdapterConfig(peft_type=peft_type.upper(), adapter_type=kind, raw=dict(raw),
                         base_model=raw.get("base_model_name_or_path") or None, revision=raw.get("revision"),
                         task_type=raw.get("task_type"), lora=lora, prompt_tuning=prompt)
