"""Click options made from a config dataclass's fields, so each default and help text is written once.

``config_option(EngineConfig, "max_lora_rank")`` is ``--max-lora-rank`` with the field's default,
its bounds as the option's range and its ``metadata["help"]``; the command only names the flag
where it differs from the field. ``take`` builds the config back from the parsed options.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, TypeVar

import click

__all__ = ["ByteSize", "config_option", "take"]

C = TypeVar("C")

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class ByteSize(click.ParamType):
    """A byte count: ``1073741824``, ``512MB``, ``1GiB``; at least ``minimum`` (0 where a field
    reads 0 as "off", like ``--prefix-cache-bytes``)."""

    name = "bytes"

    def __init__(self, minimum: int = 1) -> None:
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = m and m.group(2).lower()
        if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < self.minimum:
            self.fail(f"{value!r} is not a byte size (e.g. 1073741824, 512MB, 1GiB)", param, ctx)
        return int(float(m.group(1)) * _UNITS[unit])


def _binary(size: int) -> str:
    """``1GiB`` for 1 << 30: how a byte default reads in ``--help``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def _param_type(f: dataclasses.Field, default: Any) -> click.ParamType | None:
    low, high = f.metadata.get("low"), f.metadata.get("high")
    if f.metadata.get("unit") == "bytes":
        return ByteSize(1 if low is None else int(low))
    if low is None and high is None:
        return None
    if isinstance(low, float) or isinstance(default, float):
        return click.FloatRange(low, high)
    return click.IntRange(low, high)


def config_option(cls: type, name: str, *flags: str, **extra: Any) -> Callable:
    """``--name`` (or ``flags``) for field ``name`` of ``cls``: its default, range and help.

    Tuple fields repeat (``multiple``), booleans are flags; ``extra`` adds click settings (a
    ``type`` such as ``click.Choice`` replaces the derived one)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default
    options: dict[str, Any] = {"default": default, "help": f.metadata["help"]}
    if isinstance(default, tuple):
        options["multiple"] = True
    elif isinstance(default, bool):
        options["is_flag"] = True
    elif default is not None:
        options["show_default"] = True
        if f.metadata.get("unit") == "bytes":  # read back by ByteSize
            options["default"] = _binary(default)
    kind = _param_type(f, default)
    if kind is not None:
        options["type"] = kind
    options.update(extra)
    return click.option(*(flags or ("--" + name.replace("_", "-"),)), name, **options)


def take(cls: type[C], options: Mapping[str, Any], **given: Any) -> C:
    """A ``cls`` from the parsed options named after its fields (repeated ones as tuples), and ``given``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if k in names}
    return cls(**(values | given))
