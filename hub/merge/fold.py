"""Execute a merge plan: stream the base tensor by tensor, fold the deltas in, write the shards.

Untouched tensors are copied by the kernel (``copy_file_range``), or in bounded chunks converted
one by one when the output dtype differs; only edited tensors are materialised, one at a time,
in float32, in reused buffers. The arithmetic is numpy's; torch is imported only by the methods
that prune (TIES/DARE), on one thread.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
from threadpoolctl import threadpool_limits

from ..waiting import wait_through_interrupts
from .dtypes import from_float32, numpy_dtype
from .io import ShardedWriter
from .lora_delta import DELTA_BLOCK
from .methods import get_method
from .plan import MergePlan, OutputTensor, SourceEdit, weight_seed

__all__ = ["fold_into", "combined_delta", "merged_tensor"]

_EXACT_ALONE = ("linear", "cat")


@contextlib.contextmanager
def _torch_one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the duration, then the previous setting.

    A streaming fold is bound by memory and disk, and OpenMP's synchronisation between threads
    costs more than it saves, badly so on a busy machine: measured on the 1.5 GB benchmark model
    on the 2-core VM, 4.2 s with two threads, 1.0-2.2 s with one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def combined_delta(plan: MergePlan, out: OutputTensor, weight: np.ndarray | None) -> np.ndarray:
    """The method's combination of every editing adapter's delta for one tensor (float32).

    ``weight`` (the base values, float32) is only needed for edits that replace or rescale the
    tensor (``modules_to_save``, DoRA); pure LoRA deltas never read it.
    """
    method = get_method(plan.options.method)
    deltas = [e.delta(weight) for e in out.edits]
    weights = [plan.weights[e.source] for e in out.edits]
    if not method.uses_density:
        return method.combine(deltas, weights)
    import torch

    generator = torch.Generator().manual_seed(weight_seed(plan.options.seed, out.name))
    with _torch_one_thread():
        combined = method.combine([torch.from_numpy(d) for d in deltas], weights, plan.options.density, generator)
    return combined.numpy()


def _applied_alone(plan: MergePlan, out: OutputTensor) -> SourceEdit | None:
    """The one edit of ``out`` when it applies exactly as PEFT merges one adapter (weight 1,
    ``linear``/``cat``), else ``None``."""
    if len(out.edits) == 1 and plan.weights[out.edits[0].source] == 1.0 and plan.options.method in _EXACT_ALONE:
        return out.edits[0]
    return None


def merged_tensor(plan: MergePlan, out: OutputTensor, weight: np.ndarray,
                  scratch: np.ndarray | None = None) -> np.ndarray:
    """The merged values of one edited tensor (float32). ``weight`` may be updated in place, and
    ``scratch`` (float32, ``DELTA_BLOCK`` elements) used for its delta blocks.

    Adapters were checked finite when planned; the result is not re-scanned (a pass over every
    edited weight for an overflow finite inputs practically never reach).
    """
    edit = _applied_alone(plan, out)
    if edit is not None:
        return edit.apply(weight, scratch)  # what PEFT's merge computes
    weight += combined_delta(plan, out, weight)
    return weight


def _replacement(plan: MergePlan, out: OutputTensor) -> np.ndarray | None:
    """The tensor one adapter saves whole (``modules_to_save``) with nothing added on top: it
    replaces the base's, so the base tensor is never read. A non-float one (an integer buffer) is
    taken as stored whatever the weights and method: there is nothing to scale or combine."""
    if len(out.edits) != 1:
        return None
    edit = out.edits[0]
    if edit.saved is None or edit.loras or edit.bias_loras:
        return None
    if edit.saved.dtype == np.float32 and _applied_alone(plan, out) is None:
        return None
    return edit.saved


def _stored_as(values: np.ndarray, code: str) -> np.ndarray:
    """``values`` in the output dtype: float32 rounded like torch, anything else cast as is."""
    return from_float32(values, code) if values.dtype == np.float32 else values.astype(numpy_dtype(code), copy=False)


class _WriteBehind:
    """The writer's calls run in order on one background thread while the caller reads and folds
    the next tensor: the fold's arithmetic and the kernel's copies into the page cache each take a
    core (numpy, ``write`` and ``copy_file_range`` all release the GIL). On the 1.5 GB benchmark
    model on the 2-core VM: 0.72 s against 1.08 s writing in line (best of 4 each).

    Each edited tensor's read buffer is in flight until its write has finished, so two buffers
    alternate and a buffer is only refilled once the write that used it is done.
    """

    def __init__(self, writer: ShardedWriter, buffer_bytes: int) -> None:
        self.writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapterhub-merge-write")
        self._pending: deque[Future] = deque()
        self._buffers = [np.empty(buffer_bytes, dtype=np.uint8) for _ in range(2)]
        self._busy: list[Future | None] = [None, None]
        self._next = 0

    def buffer(self) -> tuple[int, np.ndarray]:
        """A read buffer no write is still using, and its slot number for ``write_tensor``."""
        slot = self._next
        self._next ^= 1
        if self._busy[slot] is not None:
            self._busy[slot].result()
        return slot, self._buffers[slot]

    def _submit(self, fn, *args) -> Future:
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()  # a failed write stops the fold at once
        future = self._pool.submit(fn, *args)
        self._pending.append(future)
        return future

    def write_tensor(self, slot: int | None, name: str, array: np.ndarray) -> None:
        """Queue a write of ``array``; ``slot``: the read buffer it lives in (None: its own memory)."""
        future = self._submit(self.writer.write_tensor, name, array)
        if slot is not None:
            self._busy[slot] = future

    def copy_range(self, name: str, *where) -> None:
        self._submit(self.writer.copy_range, name, *where)

    def drain(self) -> None:
        """Wait for every queued write (raising the first failure)."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Cancel queued writes and wait for the one in progress (through Ctrl-C: the writer's
        files are closed after this)."""
        wait_through_interrupts(lambda: self._pool.shutdown(wait=True, cancel_futures=True))


def fold_into(plan: MergePlan, out_dir: Path) -> list[str]:
    """Write the merged model's weights into ``out_dir``; returns the weight file names."""
    reader = plan.reader
    largest = max((reader.byte_range(o.read_from)[2] for o in plan.edited), default=0)
    scratch = np.empty(DELTA_BLOCK, dtype=np.float32)  # every LoRA delta block is formed here
    # One BLAS thread: the write-behind thread needs the other core (measured: 0.72 s against
    # 0.90 s with OpenBLAS on both cores, best of 4 on the 1.5 GB benchmark model).
    with reader, ShardedWriter(out_dir, [o.spec for o in plan.outputs], plan.max_shard_bytes) as writer, \
            threadpool_limits(limits=1, user_api="blas"):
        behind = _WriteBehind(writer, largest)
        try:
            for out in plan.outputs:
                whole = _replacement(plan, out)
                if whole is not None:
                    behind.write_tensor(None, out.name, _stored_as(whole, out.spec.dtype))
                elif out.edits:
                    slot, buffer = behind.buffer()
                    weight = reader.get_float32(out.read_from, buffer)
                    merged = merged_tensor(plan, out, weight, scratch)
                    behind.write_tensor(slot, out.name, from_float32(merged, out.spec.dtype))
                elif out.spec.dtype == reader.info(out.read_from).dtype:
                    behind.copy_range(out.name, *reader.byte_range(out.read_from))
                else:  # converted chunk by chunk through the reader's file handle: on this thread
                    behind.drain()
                    writer.write_chunks(out.name, reader.iter_chunks(out.read_from, out.spec.dtype))
            behind.drain()
        finally:
            behind.close()
    return writer.file_names
