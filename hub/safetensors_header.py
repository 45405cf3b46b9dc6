"""Read the names, dtypes and shapes of a safetensors file without loading a byte of tensor data.

The registry and the CLI use this instead of torch, so ``adapterhub list`` and ``push`` start fast
and a malformed file is caught before anything is stored.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TensorInfo", "read_safetensors_header", "SafetensorsFormatError"]

_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


class SafetensorsFormatError(ValueError):
    """The file is not a well-formed safetensors file (truncated, bad header, overlapping data)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Parse and validate the header; every tensor's byte range must lie inside the file."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise SafetensorsFormatError(f"{p.name}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw_len)
        if n > _MAX_HEADER or 8 + n > size:
            raise SafetensorsFormatError(f"{p.name}: header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsFormatError(f"{p.name}: header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{p.name}: header is not a JSON object")
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsFormatError(f"{p.name}: bad header entry for {name!r}") from e
        info = TensorInfo(dtype, shape, (start, end))
        width = _DTYPE_BYTES.get(dtype)
        if width is None or any(d < 0 for d in shape) or not 0 <= start <= end <= data_len:
            raise SafetensorsFormatError(f"{p.name}: tensor {name!r} has a bad dtype, shape or byte range")
        if end - start != info.numel * width:
            raise SafetensorsFormatError(f"{p.name}: tensor {name!r} byte range does not match its shape")
        out[name] = info
    return out
