"""Read the names, dtypes and byte ranges of a safetensors file without loading a byte of tensor data.

The registry and the CLI use this instead of torch, so ``adapterhub list`` and ``push`` start fast
and a malformed file is caught before anything is stored. Each ``TensorInfo`` carries where the
data block starts, so a reader seeks straight to a tensor without parsing the length prefix again.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import SafetensorsFormatError
from .dtypes import DTYPES

__all__ = ["TensorInfo", "read_safetensors_header", "SafetensorsFormatError"]

_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit
_LENGTH_PREFIX = 8  # little-endian u64: the header's length in bytes


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header; ``offsets`` are relative to ``data_start``."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]
    data_start: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def file_range(self) -> tuple[int, int]:
        """(start, end) of the tensor's bytes counted from the start of the file."""
        return self.data_start + self.offsets[0], self.data_start + self.offsets[1]


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Parse and validate the header; every tensor's byte range must lie inside the file."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        raw_len = f.read(_LENGTH_PREFIX)
        if len(raw_len) != _LENGTH_PREFIX:
            raise SafetensorsFormatError(f"{p}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw_len)
        data_start = _LENGTH_PREFIX + n
        if n > _MAX_HEADER or data_start > size:
            raise SafetensorsFormatError(f"{p}: header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsFormatError(f"{p}: header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{p}: header is not a JSON object")
    data_len = size - data_start
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsFormatError(f"{p}: bad header entry for {name!r}") from e
        info = TensorInfo(dtype, shape, (start, end), data_start)
        if not isinstance(dtype, str) or dtype not in DTYPES or any(d < 0 for d in shape) or not 0 <= start <= end <= data_len:
            raise SafetensorsFormatError(f"{p}: tensor {name!r} has a bad dtype, shape or byte range")
        if end - start != info.numel * DTYPES[dtype].itemsize:
            raise SafetensorsFormatError(f"{p}: tensor {name!r} byte range does not match its shape")
        out[name] = info
    return out
