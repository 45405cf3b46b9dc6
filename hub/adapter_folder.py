"""Read and validate a PEFT adapter folder: what it is, what it touches, and whether it is complete.

Everything the registry stores passes through here first, so a bad folder is refused before a
single byte reaches the store. No torch import: tensor metadata comes from the safetensors header.
Only regular files named directly inside the folder are read: a symbolic link or a special file
among the adapter's files is refused (``regular_file``), so a push never publishes what a link
points at.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .echo import echo
from .errors import InvalidAdapter, UnsupportedAdapter
from .prompt_template import PROMPT_TEMPLATE_FILE, load_prompt_template, parse_prompt_template
from .peft_format import (
    MAX_CONFIG_BYTES,
    PROMPT_MODULE,
    TensorInfo,
    config_problem,
    group_adapter_tensors,
    implied_weight_shape,
    indexed_settings,
    lora_pair,
    read_safetensors_header,
)
from .regular_file import check_regular, read_regular

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterFolder",
    "ModuleUse",
    "read_adapter_folder",
    "ADAPTER_TYPES",
    "PROMPT_TEMPLATE",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PICKLE_WEIGHTS = "adapter_model.bin"
# Files of a PEFT folder worth keeping besides the two required ones.
_OPTIONAL_FILES = ("README.md",)

# peft_type -> the adapter type the registry records.
ADAPTER_TYPES = {"LORA": "lora", "PROMPT_TUNING": "prompt_tuning"}
# The zero-parameter kind: a folder with a prompt_template.json instead of a PEFT config (``prompt_template``).
PROMPT_TEMPLATE = "prompt_template"


@dataclass(frozen=True)
class ModuleUse:
    """How a LoRA adapter uses one base module: the base weight shape its tensors imply.

    ``weight_shape`` is in the base checkpoint's own layout (already transposed for
    ``fan_in_fan_out`` layers such as GPT-2's ``Conv1D``), so it compares directly with the base's
    safetensors header.
    """

    module: str
    kind: str  # "linear" | "embedding" | "saved" (modules_to_save / a full replaced tensor)
    weight_shape: tuple[int, ...]
    rank: int


@dataclass(frozen=True)
class AdapterFolder:
    """A validated PEFT adapter folder, ready to be stored or merged."""

    path: Path
    config: dict[str, Any]
    adapter_type: str
    tensors: dict[str, TensorInfo]
    files: tuple[str, ...]
    modules: tuple[ModuleUse, ...] = field(default=())

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    @property
    def config_file(self) -> str:
        """The file that describes the adapter (and may name its base)."""
        return PROMPT_TEMPLATE_FILE if self.adapter_type == PROMPT_TEMPLATE else ADAPTER_CONFIG

    def summary(self) -> dict[str, Any]:
        """The PEFT settings a person compares adapters by; stored in the registry entry (checked
        and bounded by ``peft_format.config_values``, long texts as a preview)."""
        if self.adapter_type == PROMPT_TEMPLATE:
            return parse_prompt_template(self.config).summary()
        out = indexed_settings(self.config, self.adapter_type)
        out["parameters"] = sum(t.numel for t in self.tensors.values())
        return out


def _load_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / ADAPTER_CONFIG
    if not check_regular(cfg_path):
        raise InvalidAdapter(f"{folder}: no {ADAPTER_CONFIG} (is this a PEFT adapter folder? a prompt template "
                             f"has {PROMPT_TEMPLATE_FILE})")
    try:
        config = json.loads(read_regular(cfg_path, MAX_CONFIG_BYTES, ADAPTER_CONFIG).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidAdapter(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{cfg_path}: expected a JSON object")
    return config


def _adapter_type(config: dict[str, Any], where: Path) -> str:
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise InvalidAdapter(f"{where}: {ADAPTER_CONFIG} has no peft_type")
    kind = ADAPTER_TYPES.get(peft_type.upper())
    if kind is None:
        supported = ", ".join(sorted(ADAPTER_TYPES))
        raise UnsupportedAdapter(f"{where}: peft_type {echo(peft_type)} is not supported (supported: {supported})")
    return kind


def _module_uses(config: dict[str, Any], tensors: dict[str, TensorInfo]) -> tuple[ModuleUse, ...]:
    """Derive, per touched base module, the weight shape the adapter's tensors imply."""
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    grouped = group_adapter_tensors(tensors)
    uses: list[ModuleUse] = []
    for module, parts in sorted(grouped.lora.items()):
        a, b, embedding = lora_pair(module, parts)
        shape = implied_weight_shape(a.shape, b.shape, transposed=embedding or fan_in_fan_out)
        uses.append(ModuleUse(module, "embedding" if embedding else "linear", shape, a.shape[0]))
    # Full tensors PEFT saved as-is: modules_to_save, trainable biases, embedding base layers.
    uses += [ModuleUse(name, "saved", info.shape, 0) for name, info in grouped.saved.items()]
    return tuple(uses)


def _optional_files(folder: Path) -> list[str]:
    return [f for f in _OPTIONAL_FILES if check_regular(folder / f)]


def _prompt_template_folder(folder: Path) -> AdapterFolder:
    """A folder holding a ``prompt_template.json``: no tensors, no modules; its base is the one the file names."""
    if check_regular(folder / ADAPTER_CONFIG):
        raise InvalidAdapter(f"{folder}: holds both {ADAPTER_CONFIG} and {PROMPT_TEMPLATE_FILE}; a folder is one "
                             "adapter (push them from separate folders)")
    template = load_prompt_template(folder / PROMPT_TEMPLATE_FILE)
    return AdapterFolder(folder, template.to_dict(), PROMPT_TEMPLATE, {},
                         tuple([PROMPT_TEMPLATE_FILE] + _optional_files(folder)))


def read_adapter_folder(path: str | os.PathLike) -> AdapterFolder:
    """Validate a folder as PEFT would save it (or a prompt template folder) and describe it; raise
    ``InvalidAdapter`` otherwise."""
    folder = Path(path)
    if not folder.is_dir():
        raise InvalidAdapter(f"{folder}: not a folder")
    if check_regular(folder / PROMPT_TEMPLATE_FILE):
        return _prompt_template_folder(folder)
    config = _load_config(folder)
    kind = _adapter_type(config, folder)
    problem = config_problem(config, kind)
    if problem is not None:
        raise InvalidAdapter(f"{folder}: {ADAPTER_CONFIG}: {problem}")
    weights = folder / ADAPTER_WEIGHTS
    if not check_regular(weights):
        if check_regular(folder / _PICKLE_WEIGHTS):
            raise InvalidAdapter(
                f"{folder}: only {_PICKLE_WEIGHTS} (a pickle) is present; adapterhub stores safetensors only. "
                "Re-save with PeftModel.save_pretrained(..., safe_serialization=True)"
            )
        raise InvalidAdapter(f"{folder}: no {ADAPTER_WEIGHTS}")
    tensors = read_safetensors_header(weights)
    if not tensors:
        raise InvalidAdapter(f"{folder}: {ADAPTER_WEIGHTS} holds no tensors")
    if kind == "lora":
        if config.get("r") is None:
            raise InvalidAdapter(f"{folder}: LoRA config needs a positive integer r")
        modules = _module_uses(config, tensors)
        if not any(u.kind != "saved" for u in modules):
            raise InvalidAdapter(f"{folder}: no lora_A/lora_B tensors in {ADAPTER_WEIGHTS}")
    else:
        prompt = tensors.get("prompt_embeddings")
        n = config.get("num_virtual_tokens")
        if prompt is None or len(prompt.shape) != 2:
            raise InvalidAdapter(f"{folder}: prompt tuning adapter without a 2-d prompt_embeddings tensor")
        subs = config.get("num_transformer_submodules") or 1
        if isinstance(n, int) and prompt.shape[0] != n * subs:
            raise InvalidAdapter(
                f"{folder}: prompt_embeddings has {prompt.shape[0]} rows, config says {n} virtual tokens"
            )
        modules = (ModuleUse(PROMPT_MODULE, "prompt", (prompt.shape[1],), 0),)
    files = [ADAPTER_CONFIG, ADAPTER_WEIGHTS] + _optional_files(folder)
    return AdapterFolder(folder, config, kind, tensors, tuple(files), modules)
