"""PEFT's per-module LoRA scale, with ``rank_pattern`` / ``alpha_pattern`` matched as PEFT matches them.

The rule is ``peft.utils.other.get_pattern_key``: patterns are tried in the config's order and the
first whose regex matches the end of the module path (at a dot boundary) wins; the scale is
``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA (``LoraLayer.update_layer``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, TypeVar

__all__ = ["pattern_value", "lora_scale", "DEFAULT_LORA_ALPHA"]

DEFAULT_LORA_ALPHA = 8  # LoraConfig's default, for a config that leaves lora_alpha out

V = TypeVar("V")


def pattern_value(patterns: Mapping[str, V] | None, module: str, default: V) -> V:
    """The value of the first pattern that matches ``module`` (a path such as ``model.layers.0.q_proj``)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def lora_scale(config: Mapping[str, Any], module: str, rank: int) -> float:
    """What PEFT multiplies ``B @ A`` by for ``module``; ``rank`` is the rank of its stored pair."""
    alpha = pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", DEFAULT_LORA_ALPHA))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
