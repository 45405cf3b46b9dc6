"""Keep torch's CPU worker threads on one thread of the process: the engine loop's.

torch runs its CPU ops on OpenMP (libgomp). Every Python thread that runs a parallel op gets a pool
of its own, whose workers stay alive, asleep, after the op. Once the process holds more OpenMP
threads than there are CPUs, libgomp stops letting workers spin between parallel regions (its
"throttled" spin count, ~100 iterations): each of the thousands of small ops in a decode step then
pays futex wake-ups. Measured on a 2-core VM, one int8 decode step of a SmolLM2-135M-shaped model at
batch 8: 33 ms when only the stepping thread ever ran torch, 60 ms on a thread started after the
main thread had loaded the model (one idle pool more), 34 ms again once that pool was released.

So a thread that did torch work for the engine (loading the model, loading an adapter in a request
thread) releases its pool afterwards, and only the engine loop keeps one. This changes no result:
a released pool is rebuilt by the next parallel op of that thread. Where torch does not run on a
libgomp found in this process (macOS, Windows, other OpenMP runtimes), nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import os
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["release_thread_pool", "releasing_thread_pool"]

_OMP_PAUSE_HARD = 2  # OpenMP 5.0 ``omp_pause_hard``: free the calling thread's pool


@functools.lru_cache(maxsize=1)
def _pause_all() -> Callable[[int], int] | None:
    """``omp_pause_resource_all`` of the libgomp torch loaded, or None when there is none."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line}
    except OSError:
        return None
    for path in sorted(p for p in paths if os.path.basename(p).startswith("libgomp")):
        try:
            fn = ctypes.CDLL(path).omp_pause_resource_all  # already loaded: the same library, not a second one
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


def release_thread_pool() -> None:
    """Free the OpenMP workers the calling thread started (if any); its next parallel op starts
    them again. Call it when a thread's torch work for the engine is done."""
    import torch  # noqa: F401  (torch loads libgomp; before that there is nothing to release)

    pause = _pause_all()
    if pause is not None:
        pause(_OMP_PAUSE_HARD)


@contextmanager
def releasing_thread_pool() -> Iterator[None]:
    """Run the block, then release the calling thread's OpenMP workers (even when it raised)."""
    try:
        yield
    finally:
        release_thread_pool()
