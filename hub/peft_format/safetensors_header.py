"""Read the names, dtypes and byte ranges of a safetensors file without loading a byte of tensor data.

The registry and the CLI use this instead of torch, so ``adapterhub list`` and ``push`` start fast
and a malformed file is caught before anything is stored. Each ``TensorInfo`` carries where the
data block starts, so a reader seeks straight to a tensor without parsing the length prefix again.

A file is accepted exactly when the ``safetensors`` library would load it (its Rust crate's
``SafeTensors::read_metadata`` and ``Metadata::validate``): a UTF-8 JSON object of at most
100,000,000 bytes; ``__metadata__`` absent, null or a map of strings to strings; every tensor a
known dtype, a shape of non-negative integers and two offsets; the tensors, sorted by offsets,
tile the data block from byte 0 with neither gap nor overlap, each exactly dtype × shape bytes,
and the last one ends where the file ends. A header the library refuses could still be read by a
more lenient reader, which is why the registry refuses it before storing it, and ``verify`` flags
one already stored. Stricter only where adapterhub cannot use a file: dtypes it has no table row
for (complex and sub-byte floats).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..echo import echo
from ..errors import InvalidAdapter, SafetensorsFormatError
from ..regular_file import open_regular
from .dtypes import DTYPES

__all__ = ["TensorInfo", "read_safetensors_header", "safetensors_problem", "SafetensorsFormatError"]

_MAX_HEADER = 100_000_000  # the format's own limit (MAX_HEADER_SIZE in the Rust crate)
_LENGTH_PREFIX = 8  # little-endian u64: the header's length in bytes
_USIZE_MAX = 2**64 - 1  # offsets and dimensions are usize in the reference reader


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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_usize(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= _USIZE_MAX


def _parse_header(raw: bytes, where: Path) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise SafetensorsFormatError(f"{where}: header is not UTF-8 ({e.reason})") from None
    except ValueError as e:
        raise SafetensorsFormatError(f"{where}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{where}: header is not a JSON object")
    try:
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise SafetensorsFormatError(
            f"{where}: header holds a string that is not valid Unicode (a lone surrogate)"
        ) from None
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise SafetensorsFormatError(f"{where}: __metadata__ is not a map of strings to strings")
    return header


def _entry(name: str, entry: Any, data_start: int, where: Path) -> TensorInfo:
    ok = (
        isinstance(entry, dict)
        and isinstance(entry.get("dtype"), str)
        and isinstance(entry.get("shape"), list)
        and all(_is_usize(d) for d in entry["shape"])
        and isinstance(entry.get("data_offsets"), list)
        and len(entry["data_offsets"]) == 2
        and all(_is_usize(x) for x in entry["data_offsets"])
    )
    if not ok:
        raise SafetensorsFormatError(
            f"{where}: bad header entry for tensor {echo(name)} (needs dtype, a shape of non-negative "
            "integers and two integer data_offsets)"
        )
    dtype = entry["dtype"]
    if dtype not in DTYPES:
        raise SafetensorsFormatError(f"{where}: tensor {echo(name)} has an unsupported dtype {echo(dtype)}")
    start, end = entry["data_offsets"]
    return TensorInfo(dtype, tuple(entry["shape"]), (start, end), data_start)


def _check_tiling(tensors: dict[str, TensorInfo], data_len: int, where: Path) -> None:
    """The tensors, in offset order, must cover the data block exactly once, as the reference reader demands."""
    expected = 0
    for name, info in sorted(tensors.items(), key=lambda kv: kv[1].offsets):
        start, end = info.offsets
        if start < expected or end < start:
            raise SafetensorsFormatError(f"{where}: tensor {echo(name)} overlaps the tensor before it")
        if start > expected:
            raise SafetensorsFormatError(
                f"{where}: tensor {echo(name)} starts at byte {start}, leaving a gap after byte {expected}"
            )
        if end - start != info.numel * DTYPES[info.dtype].itemsize:
            raise SafetensorsFormatError(
                f"{where}: tensor {echo(name)} byte range ({end - start} bytes) does not match its dtype "
                f"and shape ({info.dtype} {list(info.shape)})"
            )
        expected = end
    if expected > data_len:
        raise SafetensorsFormatError(f"{where}: tensor byte ranges run past the end of the file")
    if expected < data_len:
        raise SafetensorsFormatError(f"{where}: {data_len - expected} trailing bytes after the last tensor")


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Parse and validate the header as the ``safetensors`` library does (see the module docstring)."""
    p = Path(path)
    with os.fdopen(open_regular(p), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw_len = f.read(_LENGTH_PREFIX)
        if len(raw_len) != _LENGTH_PREFIX:
            raise SafetensorsFormatError(f"{p}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw_len)
        data_start = _LENGTH_PREFIX + n
        if n > _MAX_HEADER or data_start > size:
            raise SafetensorsFormatError(f"{p}: header length {n} does not fit the file ({size} bytes)")
        raw = f.read(n)
    header = _parse_header(raw, p)
    tensors = {name: _entry(name, entry, data_start, p) for name, entry in header.items()}
    _check_tiling(tensors, size - data_start, p)
    return tensors


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why a stored file is not a safetensors file the library would load, or None (for ``verify``)."""
    try:
        read_safetensors_header(path)
    except InvalidAdapter as e:
        return "is not a file the safetensors library loads: " + str(e).removeprefix(f"{path}: ")
    return None
