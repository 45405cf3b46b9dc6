"""The ``adapter_config.json`` settings the registry index records: their types, ranges and sizes.

The index holds every version's settings inline and is read whole on every lookup, so one hostile
config (a 30 MB ``prompt_tuning_init_text``, ``r: 1e30``, ``lora_alpha: 1e38``) would slow every
reader or poison every server that loads it. Each recorded field is checked here before anything
is stored, and a long free text is recorded as a preview: the first ``PREVIEW_CHARS`` characters
and its full length, while the whole text stays in the stored ``adapter_config.json`` object.
Fields the index does not record are PEFT's business and pass untouched, inside the file bound.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Mapping

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_INDEX_SETTINGS_BYTES",
    "PREVIEW_CHARS",
    "INDEXED_FIELDS",
    "config_problem",
    "indexed_settings",
    "preview",
]

MAX_CONFIG_BYTES = 1 << 20  # PEFT writes about 1 KB; a long prompt_tuning_init_text still fits
MAX_INDEX_SETTINGS_BYTES = 64 << 10  # what one version's recorded settings may add to the index
PREVIEW_CHARS = 200
_MAX_RANK = 1 << 16  # r, rank_pattern values, virtual tokens: no model has dimensions past this
_MAX_SCALE = float(1 << 16)  # lora_alpha and alpha_pattern values, in absolute value
_MAX_ENTRIES = 4096  # target_modules / modules_to_save / pattern entries
_MAX_MODULE_CHARS = 256
_MAX_REGEX_CHARS = 4096
_IDENT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Check = Callable[[Any], str | None]  # None when the value is fine, else what it must be


def _int_in(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"an integer from {lo} to {hi}"
    return check


def _number_in(lo: float, hi: float) -> Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
        return None if ok else f"a finite number from {lo:g} to {hi:g}"
    return check


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _ident(v: Any) -> str | None:
    ok = isinstance(v, str) and _IDENT.fullmatch(v)
    return None if ok else "a name of letters, digits, '_', '.', '-' (at most 64)"


def _choice(*options: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in options else "one of " + ", ".join(options)
    return check


def _module_name(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= _MAX_MODULE_CHARS and not _CONTROL.search(v)


def _module_list(v: Any) -> str | None:
    ok = isinstance(v, list) and len(v) <= _MAX_ENTRIES and all(_module_name(m) for m in v)
    return None if ok else f"a list of at most {_MAX_ENTRIES} module names of 1 to {_MAX_MODULE_CHARS} characters"


def _modules(v: Any) -> str | None:
    if isinstance(v, str):  # a regular expression over module names, or "all-linear"
        return None if 0 < len(v) <= _MAX_REGEX_CHARS else f"a pattern of 1 to {_MAX_REGEX_CHARS} characters"
    return _module_list(v)


def _pattern(value: Check) -> Check:
    def check(v: Any) -> str | None:
        ok = (isinstance(v, dict) and len(v) <= _MAX_ENTRIES
              and all(_module_name(k) and value(x) is None for k, x in v.items()))
        return None if ok else (f"a map of at most {_MAX_ENTRIES} module patterns to {value(None)}")
    return check


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) else "a string"


def _line(limit: int) -> Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, str) and 0 < len(v) <= limit and not _CONTROL.search(v)
        return None if ok else f"one line of 1 to {limit} characters"
    return check


# Field -> its check; null (absent) is always allowed, as PEFT writes null for unset options.
_COMMON: dict[str, Check] = {
    "task_type": _ident,
    "base_model_name_or_path": _line(1024),
    "revision": _line(256),
}
_LORA: dict[str, Check] = {
    "r": _int_in(1, _MAX_RANK),
    "lora_alpha": _number_in(-_MAX_SCALE, _MAX_SCALE),
    "use_rslora": _flag,
    "target_modules": _modules,
    "rank_pattern": _pattern(_int_in(1, _MAX_RANK)),
    "alpha_pattern": _pattern(_number_in(-_MAX_SCALE, _MAX_SCALE)),
    "modules_to_save": _module_list,
    "fan_in_fan_out": _flag,
    "bias": _choice("none", "all", "lora_only"),
    "lora_dropout": _number_in(0.0, 1.0),
    "use_dora": _flag,
}
_PROMPT: dict[str, Check] = {
    "num_virtual_tokens": _int_in(1, _MAX_RANK),
    "token_dim": _int_in(1, 1 << 20),
    "num_transformer_submodules": _int_in(1, 16),
    "prompt_tuning_init": _ident,
    "prompt_tuning_init_text": _text,
}
_BY_TYPE = {"lora": _LORA, "prompt_tuning": _PROMPT}

# What the index records per adapter type (the settings a person compares adapters by).
INDEXED_FIELDS: dict[str, tuple[str, ...]] = {
    "lora": ("r", "lora_alpha", "use_rslora", "target_modules", "rank_pattern", "alpha_pattern",
             "modules_to_save", "fan_in_fan_out", "bias", "lora_dropout", "use_dora", "task_type"),
    "prompt_tuning": ("num_virtual_tokens", "token_dim", "num_transformer_submodules", "prompt_tuning_init",
                      "prompt_tuning_init_text", "task_type"),
}


def _shown(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def config_problem(config: Mapping[str, Any], adapter_type: str) -> str | None:
    """The first recorded field whose value is out of type or range, as one line naming it; or None."""
    for name, check in (_COMMON | _BY_TYPE[adapter_type]).items():
        value = config.get(name)
        if value is None:
            continue
        need = check(value)
        if need is not None:
            return f"{name} must be {need} (got {_shown(value)})"
    size = len(json.dumps(indexed_settings(config, adapter_type)))
    if size > MAX_INDEX_SETTINGS_BYTES:
        return (f"the settings the registry index records take {size} bytes, over {MAX_INDEX_SETTINGS_BYTES} "
                "(target_modules, modules_to_save or the patterns are too long)")
    return None


def preview(text: str) -> str:
    """``text`` as an index records a long free text: its first ``PREVIEW_CHARS`` characters and "…"."""
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def indexed_settings(config: Mapping[str, Any], adapter_type: str) -> dict[str, Any]:
    """The settings the index records; a free text over ``PREVIEW_CHARS`` is cut to a preview and
    ``<field>_chars`` gives its full length (the stored adapter_config.json keeps it whole)."""
    out: dict[str, Any] = {}
    for key in INDEXED_FIELDS[adapter_type]:
        value = config.get(key)
        if value in (None, {}, []):
            continue
        if key == "target_modules" and isinstance(value, list):
            value = sorted(value)
        if key == "prompt_tuning_init_text" and len(value) > PREVIEW_CHARS:
            out[key + "_chars"] = len(value)
            value = preview(value)
        out[key] = value
    return out
