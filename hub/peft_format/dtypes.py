"""The safetensors dtype codes, once: width, numpy and torch spellings, and which are floats.

Strings only, so reading a header, validating an upload or folding with numpy never imports torch;
``torch_dtype`` resolves a code when a caller already works in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DtypeCode", "DTYPES", "FLOAT_CODES", "torch_dtype"]


@dataclass(frozen=True)
class DtypeCode:
    """One dtype of the format. ``numpy`` holds its little-endian bytes (BF16: the uint16 bit
    patterns, numpy has no bfloat16); ``None`` where numpy has nothing that holds it."""

    code: str
    itemsize: int
    numpy: str | None
    torch: str
    floating: bool


DTYPES: dict[str, DtypeCode] = {d.code: d for d in (
    DtypeCode("F64", 8, "float64", "float64", True),
    DtypeCode("F32", 4, "float32", "float32", True),
    DtypeCode("F16", 2, "float16", "float16", True),
    DtypeCode("BF16", 2, "uint16", "bfloat16", True),
    DtypeCode("F8_E5M2", 1, None, "float8_e5m2", True),
    DtypeCode("F8_E4M3", 1, None, "float8_e4m3fn", True),
    DtypeCode("F8_E8M0", 1, None, "float8_e8m0fnu", True),
    DtypeCode("I64", 8, "int64", "int64", False),
    DtypeCode("I32", 4, "int32", "int32", False),
    DtypeCode("I16", 2, "int16", "int16", False),
    DtypeCode("I8", 1, "int8", "int8", False),
    DtypeCode("U64", 8, "uint64", "uint64", False),
    DtypeCode("U32", 4, "uint32", "uint32", False),
    DtypeCode("U16", 2, "uint16", "uint16", False),
    DtypeCode("U8", 1, "uint8", "uint8", False),
    DtypeCode("BOOL", 1, "bool", "bool", False),
)}

# Floats with full arithmetic in numpy and torch: the dtypes LoRA weights may be folded or served
# from, and the ones a merge can edit or write (8-bit floats pass through a merge as raw bytes).
FLOAT_CODES: tuple[str, ...] = tuple(d.code for d in DTYPES.values() if d.floating and d.numpy is not None)


def torch_dtype(code: str) -> "torch.dtype":
    """The torch dtype of a safetensors code (imports torch, which the caller already uses)."""
    import torch

    return getattr(torch, DTYPES[code].torch)
