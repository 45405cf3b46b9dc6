"""PEFT's on-disk format, known in one place: every other part of adapterhub asks here.

``keys``      how tensors are named, which LoRA pair edits which base weight, its implied shape
``adapter_config``   ``adapter_config.json`` parsed once: ``AdapterConfig`` (``LoraSettings.scale``...)
``scaling``   PEFT's rank/alpha pattern matching
``variants``  the table of LoRA variants: merged? served? why
``safetensors_header`` / ``dtypes``   the weights file's header, data start and dtype codes
``compat``    whether an adapter fits a base
``config_values``   the types, ranges and sizes of the config settings the registry index records

Nothing here imports torch or numpy.
"""

from .adapter_config import (
    ADAPTER_CONFIG,
    ADAPTER_TYPES,
    AdapterConfig,
    LoraSettings,
    PromptTuningSettings,
    parse_adapter_config,
)
from .compat import PROMPT_MODULE, base_weight_name, check_shape_fits, check_shapes_fit, missing_module
from .config_values import MAX_CONFIG_BYTES, config_problem, indexed_settings
from .dtypes import DTYPES, FLOAT_CODES, DtypeCode, torch_dtype
from .keys import (
    ADAPTER_KEY_PREFIX,
    LORA_PAIRS,
    GroupedTensors,
    LoraKey,
    adapter_key,
    group_adapter_tensors,
    implied_weight_shape,
    lora_pair,
    parse_adapter_key,
)
from .safetensors_header import SafetensorsFormatError, TensorInfo, read_safetensors_header, safetensors_problem
from .scaling import DEFAULT_LORA_ALPHA, pattern_value
from .variants import LORA_VARIANTS, LoraVariant, check_mergeable, check_servable, variants_in_use

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_TYPES",
    "AdapterConfig",
    "LoraSettings",
    "PromptTuningSettings",
    "parse_adapter_config",
    "ADAPTER_KEY_PREFIX",
    "DEFAULT_LORA_ALPHA",
    "DTYPES",
    "FLOAT_CODES",
    "LORA_PAIRS",
    "LORA_VARIANTS",
    "PROMPT_MODULE",
    "DtypeCode",
    "GroupedTensors",
    "LoraKey",
    "LoraVariant",
    "SafetensorsFormatError",
    "TensorInfo",
    "adapter_key",
    "base_weight_name",
    "check_mergeable",
    "check_servable",
    "check_shape_fits",
    "check_shapes_fit",
    "group_adapter_tensors",
    "implied_weight_shape",
    "lora_pair",
    "missing_module",
    "parse_adapter_key",
    "pattern_value",
    "read_safetensors_header",
    "safetensors_problem",
    "MAX_CONFIG_BYTES",
    "config_problem",
    "indexed_settings",
    "torch_dtype",
    "variants_in_use",
]
