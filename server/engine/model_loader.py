"""Load the one base model a server runs: local folder, GGUF file or Hub id, optionally quantized.

``quantize`` is ``auto`` (the default: the fastest mode measured near-lossless on a real model for
the device), ``bf16``, ``int8``, ``nf4`` or ``none``. On a CPU:

* ``bf16`` (``auto``'s choice): linear weights in bfloat16, products on the CPU's bf16 dot products,
  fp32 everywhere else (``bf16_linear``). On SmolLM2-135M-Instruct it leaves perplexity unchanged
  and most greedy answers identical to ``none``, at several times ``none``'s speed. Its kernel is
  compiled on first use (``native_kernels``); without a C compiler ``auto`` falls back to ``none``.
* ``int8``: fbgemm's int8 linear with per-row activation scales (``int8_linear``): fast, but lossy
  on real weights (BENCHMARKS.md gives the perplexity and the greedy agreement it costs).

bitsandbytes' nf4 / LLM.int8 CPU kernels make a CPU step slower than fp32. On a GPU, ``int8`` is
bitsandbytes' LLM.int8 and ``nf4`` its 4-bit weights, the memory saver (``auto``'s choice there).

On a CPU the model's attention is ``attention.ATTENTION_NAME`` whatever the mode, so a row's answer
never depends on its batch mates (``attention`` says why SDPA's does).

Everything the serving engine needs to know about the base travels in one ``LoadedBase``: the
model and tokenizer, where and in which dtype it computes, how it was quantized, how much memory
it holds, and its ``BaseInfo`` (weight shapes and fingerprint, read from the safetensors headers)
so adapters can be checked against it before they are loaded into slots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from adapterhub.base_model import BaseInfo, load_base_info, model_location
from adapterhub.errors import IncompatibleBase
from adapterhub.serving_config import ENGINE_DEFAULTS, QUANTIZE_MODES, check_quantize

from .attention import use_batch_invariant_attention
from .packed_linear import pack_linear_layers, packed_bytes
from .shared_input import SHARED_INPUT

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

    from .packed_linear import ProductFactory

__all__ = ["LoadedBase", "load_base_model", "QUANTIZE_MODES", "DEFAULT_QUANTIZE", "CPU_PACKED_MODES",
           "resolve_device", "resolve_dtype", "resolve_quantize", "cpu_product", "pack_cpu_layers"]

log = logging.getLogger(__name__)

# What ``auto`` means per device type: the fastest mode measured near-lossless there (BENCHMARKS.md).
DEFAULT_QUANTIZE = {"cpu": "bf16", "cuda": "nf4"}
CPU_PACKED_MODES = ("bf16", "int8")  # CPU modes whose linear layers are ``packed_linear.PackedLinear``
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedBase:
    """A base model ready for inference, plus what the engine needs to know about it.

    Args:
        model: the ``*ForCausalLM`` module, in eval mode.
        tokenizer: its tokenizer.
        name: the folder or Hub id it was loaded from.
        quantize: ``"bf16"``, ``"int8"``, ``"nf4"`` or ``"none"`` (``auto`` resolved for the device).
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
    """``auto`` becomes the device's default (``DEFAULT_QUANTIZE``; on a CPU that cannot build the
    bf16 kernel, ``none``); other modes are checked."""
    check_quantize(quantize)
    if quantize == "bf16" and device.type != "cpu":
        raise ValueError("--quantize bf16 is the CPU mode; on a GPU, bfloat16 is --dtype's default already")
    if quantize == "auto":
        mode = DEFAULT_QUANTIZE.get(device.type, "none")
        if mode == "bf16" and not _bf16_kernel_available():
            return "none"
        return mode
    return quantize


def _bf16_kernel_available() -> bool:
    from .native_kernels import KernelUnavailable

    try:
        from .bf16_linear import native_bf16

        native_bf16()
    except KernelUnavailable as e:
        log.warning("--quantize auto serves the weights as stored (none): the bf16 kernel is unavailable (%s)", e)
        return False
    return True


def _quantization_config(quantize: str, dtype: torch.dtype) -> BitsAndBytesConfig:
    from transformers import BitsAndBytesConfig

    if quantize == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base_model(
    base: str, *, quantize: str = ENGINE_DEFAULTS.quantize, device: str | None = None, dtype: str | None = None
) -> LoadedBase:
    """Load ``base`` for serving; ``quantize`` picks bf16 / int8 / nf4 weights, none, or ``auto``.

    The base's identity (``info``) is read from its safetensors headers, not from the loaded
    modules, so a quantized model has the same fingerprint as its full-precision files and
    adapters registered against either fit both.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    mode = resolve_quantize(quantize, dev)
    dt = resolve_dtype(dtype, dev)
    cpu_packed = mode in CPU_PACKED_MODES and dev.type == "cpu"
    if cpu_packed and dt != torch.float32:
        raise ValueError(f"{mode} on the CPU computes in float32, not {dt} (drop --dtype or pick another --quantize)")
    info = load_base_info(base)
    kwargs: dict[str, Any] = {"dtype": dt, "device_map": {"": str(dev)}}
    if mode in ("nf4", "int8") and not cpu_packed:
        kwargs["quantization_config"] = _quantization_config(mode, dt)
    files = model_location(base)
    try:
        model = AutoModelForCausalLM.from_pretrained(files, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(files)
    except OSError as e:
        raise IncompatibleBase(f"base {base}: cannot load ({e})".splitlines()[0]) from e
    model.eval()
    if dev.type == "cpu" and not use_batch_invariant_attention(model):
        log.warning("base %s keeps its own attention: a row's answer may depend on its batch mates", base)
    footprint = int(model.get_memory_footprint())
    if cpu_packed:
        footprint = pack_cpu_layers(model, mode)
    log.info("loaded base %s (%s, %s, %s): %.1f MB", base, mode, dev, dt, footprint / 1e6)
    return LoadedBase(model, tokenizer, base, mode, dev, dt, info, footprint)


def cpu_product(mode: str) -> ProductFactory:
    """The packed product of a CPU mode (``bf16`` or ``int8``)."""
    if mode == "bf16":
        from .bf16_linear import Bf16Product

        return Bf16Product
    if mode == "int8":
        from .int8_linear import Int8Product

        return Int8Product
    raise ValueError(f"{mode!r} is not a packed CPU mode ({', '.join(CPU_PACKED_MODES)})")


def pack_cpu_layers(model: nn.Module, mode: str, *, skip: Callable[[str], bool] = lambda name: False) -> int:
    """Swap every linear layer, the output head included, for a ``PackedLinear`` of ``mode``; return
    the bytes the model holds afterwards. A head tied to the input embeddings gets a packed copy of
    its own: the embeddings stay fp32 for the prompt and soft-prompt lookups. ``skip`` keeps the
    layers it accepts as they are (PEFT's own LoRA layers, in the tests' oracle)."""
    pack_linear_layers(model, cpu_product(mode), mode, skip=skip, shared_inputs=SHARED_INPUT)
    dense = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return dense + packed_bytes(model)
