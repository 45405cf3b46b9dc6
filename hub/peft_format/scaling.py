"""PEFT's ``rank_pattern`` / ``alpha_pattern`` matched as PEFT matches them.

The rule is ``peft.utils.other.get_pattern_key``: patterns are tried in the config's order and the
first whose regex matches the end of the module path (at a dot boundary) wins. The scale built on
it is ``LoraSettings.scale`` (``adapter_config``).
"""

from __future__ import annotations

import re
from typing import Mapping, TypeVar

__all__ = ["pattern_value", "DEFAULT_LORA_ALPHA"]

DEFAULT_LORA_ALPHA = 8  # LoraConfig's default, for a config that leaves lora_alpha out

V = TypeVar("V")


def pattern_value(patterns: Mapping[str, V] | None, module: str, default: V) -> V:
    """The value of the first pattern that matches ``module`` (a path such as ``model.layers.0.q_proj``)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
