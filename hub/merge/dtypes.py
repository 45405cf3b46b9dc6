"""safetensors dtype codes as numpy arrays, and the float32 round trip an edited tensor takes.

The fold computes in float32 with numpy, so a merge never imports torch unless a method needs it
(TIES/DARE pruning, SVD, ``--verify``): ``import torch`` alone costs more than the whole fold of a
1.5 GB model on a 2-core machine. numpy has no bfloat16, so BF16 travels as its uint16 bit
patterns: widened exactly to float32 by a shift, narrowed with round-to-nearest-even, which gives
the bits torch's ``.to(torch.bfloat16)`` gives for every number (a NaN becomes the quiet NaN 0x7FC0).
"""

from __future__ import annotations

import numpy as np

from ..errors import MergeError
from ..peft_format import DTYPES, FLOAT_CODES

__all__ = ["FLOAT_CODES", "numpy_dtype", "to_float32", "from_float32"]

# Tensors of every dtype the format defines pass through a merge as raw bytes; only FLOAT_CODES
# can be edited or converted.
_BF16_QUIET_NAN = np.uint16(0x7FC0)


def numpy_dtype(code: str) -> np.dtype:
    """The numpy dtype that holds a safetensors dtype's little-endian bytes (BF16: uint16 bits)."""
    spec = DTYPES.get(code)
    if spec is None or spec.numpy is None:
        raise MergeError(f"tensors of dtype {code} cannot be merged")
    return np.dtype(spec.numpy).newbyteorder("<")


def to_float32(raw: np.ndarray, code: str) -> np.ndarray:
    """Float values of ``raw`` (an array of ``numpy_dtype(code)``) as float32; F32 comes back as is."""
    if code not in FLOAT_CODES:
        raise MergeError(f"a {code} tensor cannot be edited by a merge (only floating-point weights can)")
    if code == "F32":
        return raw
    if code == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def from_float32(values: np.ndarray, code: str) -> np.ndarray:
    """float32 ``values`` stored as ``code`` (round to nearest even, like torch's conversions)."""
    if code not in FLOAT_CODES:
        raise MergeError(f"cannot store float values as {code}")
    if code == "F32":
        return values
    if code != "BF16":
        with np.errstate(over="ignore"):  # beyond float16's range is inf, as torch gives, silently
            return values.astype(DTYPES[code].numpy)
    bits = values.view(np.uint32)
    lsb = (bits >> 16) & 1
    rounded = ((bits + (0x7FFF + lsb)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = _BF16_QUIET_NAN
    return rounded
