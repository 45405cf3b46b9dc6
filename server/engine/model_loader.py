"""Load the one base model a server runs: local folder or Hub id, optionally quantized by bitsandbytes.

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

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LoadedBase", "load_base_model", "QUANTIZE_MODES", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("nf4", "int8", "none")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedBase:
    """A base model ready for inference, plus what the engine needs to know about it.

    Args:
        model: the ``*ForCausalLM`` module, in eval mode.
        tokenizer: its tokenizer.
        name: the folder or Hub id it was loaded from.
        quantize: ``"nf4"``, ``"int8"`` or ``"none"``.
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


def _quantization_config(quantize: str, dtype: torch.dtype) -> BitsAndBytesConfig:
    from transformers import BitsAndBytesConfig

    if quantize == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base_model(
    base: str, *, quantize: str = "nf4", device: str | None = None, dtype: str | None = None
) -> LoadedBase:
    """Load ``base`` for serving; ``quantize`` picks bitsandbytes nf4 / int8 weights or none.

    The base's identity (``info``) is read from its safetensors headers, not from the loaded
    modules, so a quantized model has the same fingerprint as its full-precision files and
    adapters registered against either fit both.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r} (choose from {', '.join(QUANTIZE_MODES)})")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    info = load_base_info(base)
    kwargs: dict[str, Any] = {"dtype": dt, "device_map": {"": str(dev)}}
    if quantize != "none":
        kwargs["quantization_config"] = _quantization_config(quantize, dt)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(base)
    except OSError as e:
        raise IncompatibleBase(f"base {base}: cannot load ({e})".splitlines()[0]) from e
    model.eval()
    footprint = int(model.get_memory_footprint())
    log.info("loaded base %s (%s, %s, %s): %.1f MB", base, quantize, dev, dt, footprint / 1e6)
    return LoadedBase(model, tokenizer, base, quantize, dev, dt, info, footprint)
