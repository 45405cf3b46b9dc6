"""Load the one base model a server runs: local folder or Hub id, optionally quantized.

``quantize`` is ``auto`` (the default: the fastest mode measured safe on the device), ``int8``,
``nf4`` or ``none``. On a CPU, ``int8`` is fbgemm's int8 linear with per-row activation scales
(``int8_linear``): a decode step there is bound by memory bandwidth, so a quarter of the weight bytes
makes it several times faster than fp32, where bitsandbytes' nf4 / LLM.int8 CPU kernels make it
slower. On a GPU, ``int8`` is bitsandbytes' LLM.int8 and ``nf4`` its 4-bit weights, the memory saver.

Everything the serving engine needs to know about the base travels in one ``LoadedBase``: the
model and tokenizer, where and in which dtype it computes, how it was quantized, how much memory
it holds, and its ``BaseInfo`` (weight shapes and fingerprint, read from the safetensors headers)
so adapters can be checked against it before they are loaded into slots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from adapterhub.base_model import BaseInfo, load_base_info
from adapterhub.errors import IncompatibleBase

from .int8_linear import int8_bytes, quantize_linear_layers
from .shared_input import SHARED_INPUT

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LoadedBase", "load_base_model", "QUANTIZE_MODES", "DEFAULT_QUANTIZE", "resolve_device", "resolve_dtype",
           "resolve_quantize"]

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("auto", "int8", "nf4", "none")
# What ``auto`` means per device type: the fastest mode measured safe there (BENCHMARKS.md).
DEFAULT_QUANTIZE = {"cpu": "int8", "cuda": "nf4"}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedBase:
    """A base model ready for inference, plus what the engine needs to know about it.

    Args:
        model: the ``*ForCausalLM`` module, in eval mode.
        tokenizer: its tokenizer.
        name: the folder or Hub id it was loaded from.
        quantize: ``"int8"``, ``"nf4"`` or ``"none"`` (``auto`` resolved for the device).
        device: where it computes.
        dtype: the compute dtype (activations, LoRA slot buffers).
        info: weight shapes and fingerprint of the base files; ``None`` when they could not be read
            (a Hub id while offline).
        footprint_bytes: parameter and buffer bytes the model holds.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    quantize: str
    device: torch.device
    dtype: torch.dtype
    info: BaseInfo | None
    footprint_bytes: int


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` means bf16 on a GPU and fp32 on the CPU (CPU half-precision matmuls are slow)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (choose from {', '.join(sorted(_DTYPES))})") from None


def resolve_quantize(quantize: str, device: torch.device) -> str:
    """``auto`` becomes the device's default (``DEFAULT_QUANTIZE``); other modes are checked."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r} (choose from {', '.join(QUANTIZE_MODES)})")
    if quantize == "auto":
        return DEFAULT_QUANTIZE.get(device.type, "none")
    return quantize


def _quantization_config(quantize: str, dtype: torch.dtype) -> BitsAndBytesConfig:
    from transformers import BitsAndBytesConfig

    if quantize == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base_model(
    base: str, *, quantize: str = "auto", device: str | None = None, dtype: str | None = None
) -> LoadedBase:
    """Load ``base`` for serving; ``quantize`` picks int8 / nf4 weights, none, or ``auto``.

    The base's identity (``info``) is read from its safetensors headers, not from the loaded
    modules, so a quantized model has the same fingerprint as its full-precision files and
    adapters registered against either fit both.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    mode = resolve_quantize(quantize, dev)
    dt = resolve_dtype(dtype, dev)
    cpu_int8 = mode == "int8" and dev.type == "cpu"
    if cpu_int8 and dt != torch.float32:
        raise ValueError(f"int8 on the CPU computes in float32, not {dt} (drop --dtype or pick another --quantize)")
    info = load_base_info(base)
    kwargs: dict[str, Any] = {"dtype": dt, "device_map": {"": str(dev)}}
    if mode in ("nf4", "int8") and not cpu_int8:
        kwargs["quantization_config"] = _quantization_config(mode, dt)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(base)
    except OSError as e:
        raise IncompatibleBase(f"base {base}: cannot load ({e})".splitlines()[0]) from e
    model.eval()
    footprint = int(model.get_memory_footprint())
    if cpu_int8:
        footprint = _quantize_cpu_int8(model)
    log.info("loaded base %s (%s, %s, %s): %.1f MB", base, mode, dev, dt, footprint / 1e6)
    return LoadedBase(model, tokenizer, base, mode, dev, dt, info, footprint)


def _quantize_cpu_int8(model: PreTrainedModel) -> int:
    """Swap every linear layer, the output head included, for an ``Int8Linear``; return the bytes
    the model holds afterwards. A head tied to the input embeddings gets an int8 copy of its own:
    the embeddings stay fp32 for the prompt and soft-prompt lookups."""
    quantize_linear_layers(model, shared_inputs=SHARED_INPUT)
    dense = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return dense + int8_bytes(model)
