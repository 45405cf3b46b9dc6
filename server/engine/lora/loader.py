"""A PEFT ``adapter_model.safetensors`` -> one slot of the wrapped layers' weight stacks.

PEFT's format (key names, scale, the variants a slot cannot compute, the header) is read through
``adapterhub.peft_format``. Everything is checked (config, names, shapes, ranks) from the
safetensors header before a byte is read, so a refused adapter leaves the slot as it was. The file
is then read once into a reusable (pinned, on CUDA) host buffer, checked finite in one pass per
run of same-dtype tensors (``torch.aminmax`` over the file's data, not one check per tensor), and
each tensor is copied into its slot as it lies in the file (the slots keep PEFT's layout), with the
LoRA scale folded into B; on CUDA the copies run on a stream of their own, not on the one the
decode steps use.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from adapterhub.errors import IncompatibleBase, InvalidAdapter, UnsupportedAdapter
from adapterhub.peft_format import (
    FLOAT_CODES,
    AdapterConfig,
    TensorInfo,
    check_servable,
    check_shape_fits,
    group_adapter_tensors,
    implied_weight_shape,
    lora_pair,
    read_safetensors_header,
    torch_dtype,
)

from .layer import NUMPY_FLOATS, GatheredLoraLinear

__all__ = ["LoraPair", "SlotLoader", "read_lora_pairs"]


@dataclass(frozen=True)
class LoraPair:
    """One wrapped layer's A and B in the file, and the scale folded into B."""

    module: GatheredLoraLinear
    a: TensorInfo
    b: TensorInfo
    rank: int
    scale: float

    @property
    def slot_elements(self) -> int:
        return self.rank * (self.module.in_features + self.module.out_features)


def read_lora_pairs(config: AdapterConfig, weights_path: str, layers: Mapping[str, GatheredLoraLinear], *,
                    max_rank: int, base: str) -> list[LoraPair]:
    """The file's A/B pairs matched to ``layers``, every one checked; nothing of the file's data is read.

    Raises ``IncompatibleBase`` when a tensor does not fit a wrapped layer of ``base``,
    ``InvalidAdapter`` / ``UnsupportedAdapter`` for a file or config the gathered path cannot
    compute exactly (``peft_format.check_servable``).
    """
    where = str(weights_path)
    lora = config.lora
    if lora is None:
        raise UnsupportedAdapter(f"peft_type {config.peft_type} is not a LoRA; adapter slots hold LoRA adapters only")
    try:
        tensors = read_safetensors_header(weights_path)
    except OSError as e:
        raise InvalidAdapter(f"{where}: {e}") from e
    grouped = group_adapter_tensors(tensors)
    check_servable(config, grouped, where)
    pairs = []
    for module_name, parts in sorted(grouped.lora.items()):
        try:
            a, b, _ = lora_pair(module_name, parts)
        except InvalidAdapter as e:
            raise InvalidAdapter(f"{where}: {e}") from e
        layer = layers.get(module_name)
        if layer is None:
            raise IncompatibleBase(
                f"{where}: adapter targets {module_name}, which is not a linear layer this server wraps"
            )
        check_shape_fits(module_name, implied_weight_shape(a.shape, b.shape, transposed=False),
                         (layer.out_features, layer.in_features), base=base, where=where)
        rank = a.shape[0]
        if rank > max_rank:
            raise UnsupportedAdapter(f"{where}: {module_name} has rank {rank}, above this server's max rank "
                                     f"{max_rank}")
        for t in (a, b):
            if t.dtype not in FLOAT_CODES:
                raise InvalidAdapter(f"{where}: {module_name} has dtype {t.dtype}, expected a float type")
        pairs.append(LoraPair(layer, a, b, rank, lora.scale(module_name, rank)))
    if not pairs:
        raise InvalidAdapter(f"{where}: no lora_A/lora_B tensors")
    return pairs


class SlotLoader:
    """Copies checked pairs from their file into a slot; keeps one staging buffer for every load.

    Not thread-safe: the slot bank calls it under its lock.
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._staging: torch.Tensor | None = None
        self._stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None

    def write(self, slot: int, pairs: list[LoraPair], weights_path: str) -> None:
        """Read ``weights_path`` once and write every pair into ``slot`` (the slot must be empty).

        Raises ``InvalidAdapter`` when a weight is not finite once scaled (the caller empties the
        slot): in the gathered product a row of another adapter multiplies that slot's zeros, and
        0 * inf would poison rows that never asked for this adapter."""
        buf = self._stage(weights_path, os.stat(weights_path).st_size)
        tensors, largest = _read_tensors(buf, [t for p in pairs for t in (p.a, p.b)],
                                         arrays=self._device.type == "cpu")
        if not math.isfinite(largest):
            raise _not_finite(weights_path)
        # One bound for every pair, in the slots' dtype: only when it fails is each slot checked.
        overflow = _may_overflow(largest, max(p.scale for p in pairs), pairs[0].module.lora_B.dtype)
        stream = self._stream
        if stream is not None:  # the zeroing of the slot's previous adapter runs on the compute stream
            stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            for i, p in enumerate(pairs):
                _write_pair(p, slot, tensors[2 * i], tensors[2 * i + 1])
                p.module.ranks[slot] = p.rank
        if stream is not None:
            stream.synchronize()
        if overflow and not all(bool(torch.isfinite(p.module.slot(slot)[0][: p.rank]).all())
                                and bool(torch.isfinite(p.module.slot(slot)[1][:, : p.rank]).all()) for p in pairs):
            raise _not_finite(weights_path)

    def _stage(self, path: str, size: int) -> torch.Tensor:
        """The file's bytes in (pinned, on CUDA) host memory, reusing one staging buffer."""
        if self._staging is None or self._staging.numel() < size:
            self._staging = torch.empty(max(size, 1 << 20), dtype=torch.uint8,
                                        pin_memory=self._device.type == "cuda")
        buf = self._staging[:size]
        with open(path, "rb", buffering=0) as f:
            view = memoryview(buf.numpy())
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    raise InvalidAdapter(f"{path}: file shrank while being read")
                got += n
        return buf


def _write_pair(p: LoraPair, slot: int, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> None:
    """Slot ``slot`` of ``p``'s layer = ``(a, scale * b)``, in the slot's dtype: the slots keep
    PEFT's layout, so this copies rows as they lie in the file.

    On the CPU, with the file in the slots' dtype, numpy slices and copies (a load writes hundreds
    of matrices, and torch's dispatch would cost more than the copies); its float32 product by a
    float32 scale is the one torch computes."""
    arrays = p.module.slot_arrays(slot)
    if arrays is not None and isinstance(a, np.ndarray) and isinstance(b, np.ndarray) \
            and a.dtype == b.dtype == arrays[0].dtype:
        slot_a, slot_b = arrays
        np.copyto(slot_a[: p.rank], a)
        np.multiply(b, slot_b.dtype.type(p.scale), out=slot_b[:, : p.rank])
        return
    slot_a, slot_b = p.module.slot(slot)
    slot_a[: p.rank].copy_(torch.as_tensor(a), non_blocking=True)
    dst = slot_b[:, : p.rank]
    dst.copy_(torch.as_tensor(b), non_blocking=True)
    dst.mul_(p.scale)


def _not_finite(path: str) -> InvalidAdapter:
    return InvalidAdapter(f"{path}: weights that are not finite once scaled by lora_alpha / r (NaN or inf); "
                          "the adapter cannot be served")


def _may_overflow(largest: float, scale: float, dtype: torch.dtype) -> bool:
    """Whether a value of magnitude ``largest``, in ``dtype``, or times ``scale`` could be infinite."""
    value = torch.tensor(largest, dtype=dtype)
    return not (bool(torch.isfinite(value)) and bool(torch.isfinite(value * torch.tensor(scale, dtype=dtype))))


def _read_tensors(buf: torch.Tensor, infos: list[TensorInfo], *,
                  arrays: bool) -> tuple[list[torch.Tensor | np.ndarray], float]:
    """Views of the tensors ``infos`` in ``buf`` and their largest |value| (NaN or inf when one
    is not finite); numpy views where ``arrays`` and numpy has the dtype.

    Tensors that sit back to back in the file with one dtype (a PEFT file: all of them) are read
    as one run: one finiteness pass over the data and a view per tensor, not a kernel each."""
    runs: list[list] = []  # [start, end, dtype code, indices of infos]
    for i in sorted(range(len(infos)), key=lambda i: infos[i].file_range[0]):
        start, end = infos[i].file_range
        if runs and runs[-1][1] == start and runs[-1][2] == infos[i].dtype:
            runs[-1][1] = end
            runs[-1][3].append(i)
        else:
            runs.append([start, end, infos[i].dtype, [i]])
    tensors: list[torch.Tensor | np.ndarray] = [torch.empty(0)] * len(infos)
    largest = torch.zeros((), dtype=torch.float64)
    for start, end, code, members in runs:
        dtype = torch_dtype(code)
        raw = buf[start:end]
        if start % dtype.itemsize:
            raw = raw.clone()  # view(dtype) needs an aligned offset
        flat = raw.view(dtype)
        if flat.numel():
            lo, hi = torch.aminmax(flat)
            largest = torch.maximum(largest, torch.maximum(-lo.double(), hi.double()))  # NaN propagates
        whole = flat.numpy() if arrays and dtype in NUMPY_FLOATS else flat
        for i in members:
            offset = (infos[i].file_range[0] - start) // dtype.itemsize
            tensors[i] = whole[offset : offset + infos[i].numel].reshape(infos[i].shape)
    return tensors, float(largest)
