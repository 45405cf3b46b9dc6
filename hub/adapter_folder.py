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

from .errors import InvalidAdapter
from .prompt_template import PROMPT_TEMPLATE_FILE, load_prompt_template, parse_prompt_template
from .peft_format import (
    ADAPTER_CONFIG,
    ADAPTER_TYPES,
    MAX_CONFIG_BYTES,
    PROMPT_MODULE,
    AdapterConfig,
    TensorInfo,
    group_adapter_tensors,
    implied_weight_shape,
    indexed_settings,
    lora_pair,
    parse_adapter_config,
    read_safetensors_header,
)
from .regular_file import check_regular, read_regular

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterFolder",
    "ModuleUse",
    "read_adapter_folder",
    "read_adapter_config",
    "ADAPTER_TYPES",
    "PROMPT_TEMPLATE",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PICKLE_WEIGHTS = "adapter_model.bin"
# Files of a PEFT folder worth keeping besides the two required ones.
_OPTIONAL_FILES = ("README.md",)

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
    """A validated PEFT adapter folder, ready to be stored or merged.

    ``config`` is the describing file's JSON object as written (``adapter_config.json``, or a
    prompt template's); ``settings`` is ``adapter_config.json`` parsed (``None`` for a template).
    """

    path: Path
    config: dict[str, Any]
    adapter_type: str
    tensors: dict[str, TensorInfo]
    files: tuple[str, ...]
    modules: tuple[ModuleUse, ...] = field(default=())
    settings: AdapterConfig | None = None

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


def read_adapter_config(folder: str | os.PathLike) -> AdapterConfig:
    """A folder's ``adapter_config.json``, parsed and checked (``peft_format.parse_adapter_config``)."""
    return parse_adapter_config(_load_config(Path(folder)), Path(folder))


def _module_uses(fan_in_fan_out: bool, tensors: dict[str, TensorInfo]) -> tuple[ModuleUse, ...]:
    """Derive, per touched base module, the weight shape the adapter's tensors imply."""
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
    settings = parse_adapter_config(config, folder)
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
    if settings.lora is not None:
        if settings.lora.r is None:
            raise InvalidAdapter(f"{folder}: LoRA config needs a positive integer r")
        modules = _module_uses(settings.lora.fan_in_fan_out, tensors)
        if not any(u.kind != "saved" for u in modules):
            raise InvalidAdapter(f"{folder}: no lora_A/lora_B tensors in {ADAPTER_WEIGHTS}")
    else:
        prompt = tensors.get("prompt_embeddings")
        soft = settings.prompt_tuning
        n = soft.num_virtual_tokens
        if prompt is None or len(prompt.shape) != 2:
            raise InvalidAdapter(f"{folder}: prompt tuning adapter without a 2-d prompt_embeddings tensor")
        if n is not None and prompt.shape[0] != n * soft.num_transformer_submodules:
            raise InvalidAdapter(
                f"{folder}: prompt_embeddings has {prompt.shape[0]} rows, config says {n} virtual tokens"
            )
        modules = (ModuleUse(PROMPT_MODULE, "prompt", (prompt.shape[1],), 0),)
    files = [ADAPTER_CONFIG, ADAPTER_WEIGHTS] + _optional_files(folder)
    return AdapterFolder(folder, config, settings.adapter_type, tensors, tuple(files), modules, settings)
