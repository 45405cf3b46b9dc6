"""Keep torch's CPU worker threads on one thread of the process: the engine loop's.

torch runs its CPU ops on OpenMP (libgomp). Every Python thread that runs a parallel op gets a pool
of its own, whose workers stay alive, asleep, after the op. Once the process holds more OpenMP
threads than there are CPUs, libgomp stops letting workers spin between parallel regions (its
"throttled" spin count, ~100 iterations): each of the thousands of small ops in a decode step then
pays futex wake-ups. Measured on a 2-core VM, one int8 decode step of a SmolLM2-135M-shaped model at
batch 8: 33 ms when only the stepping thread ever ran torch, 60 ms on a thread started after the
main thread had loaded the model (one idle pool more), 34 ms again once that pool was released.

So the thread that loaded the model releases its pool when the engine starts, work in request
threads (adapter loads) runs single-threaded, and only the engine loop keeps a pool. This changes no result:
a released pool is rebuilt by the next parallel op of that thread. Where torch does not run on a
libgomp found in this process (macOS, Windows, other OpenMP runtimes), nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["release_thread_pool", "single_threaded", "favour_the_engine_thread", "ENGINE_SWITCH_INTERVAL_S"]

# How long a Python thread may keep the GIL while another waits for it (CPython's default: 5 ms).
ENGINE_SWITCH_INTERVAL_S = 0.0005

_OMP_PAUSE_HARD = 2  # OpenMP 5.0 ``omp_pause_hard``: free the calling thread's pool


@functools.lru_cache(maxsize=1)
def _libgomp() -> ctypes.CDLL | None:
    """The libgomp torch loaded (the same library, not a second copy), or None when there is none."""
    import torch  # noqa: F401  (torch loads libgomp)

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[-1].rstrip("\n") for line in maps if "libgomp" in line}  # paths may hold spaces
    except OSError:
        return None
    for path in sorted(p for p in paths if os.path.basename(p).startswith("libgomp")):
        try:
            lib = ctypes.CDLL(path)
            lib.omp_pause_resource_all.argtypes, lib.omp_pause_resource_all.restype = [ctypes.c_int], ctypes.c_int
            lib.omp_set_num_threads.argtypes, lib.omp_set_num_threads.restype = [ctypes.c_int], None
            lib.omp_get_max_threads.argtypes, lib.omp_get_max_threads.restype = [], ctypes.c_int
        except (OSError, AttributeError):
            continue
        return lib
    return None


def release_thread_pool() -> None:
    """Free the OpenMP workers the calling thread started (if any); its next parallel op starts
    them again. Call it when a thread's torch work for the engine is done."""
    gomp = _libgomp()
    if gomp is not None:
        gomp.omp_pause_resource_all(_OMP_PAUSE_HARD)


def favour_the_engine_thread() -> None:
    """Shorten the interval after which a thread holding the GIL must hand it to a waiting one.

    The engine loop releases the GIL around every kernel call (hundreds a decode step) and needs it
    back at once after each; a request thread doing pure-Python work (parsing a body, an index
    query) keeps it for a whole switch interval every time. At CPython's 5 ms one busy request thread
    made the tiny base's decode 3-4x slower in-process, and a client loading and unloading adapters
    in a loop made the soak's well-behaved clients 7x slower; at 0.5 ms the engine lost 1.0-1.7x
    (noisy, 2-core VM). The interval is process-wide: set once, when an engine starts, never raised."""
    if sys.getswitchinterval() > ENGINE_SWITCH_INTERVAL_S:
        sys.setswitchinterval(ENGINE_SWITCH_INTERVAL_S)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block's torch ops on the calling thread alone, its OpenMP workers (if any) released
    before and none started: for work outside the engine loop, such as an adapter load
    in a request thread (measured through the server: p50 17.5 ms this way, 25 ms when each load
    started workers and released them after)."""
    import torch

    gomp = _libgomp()
    if gomp is None:
        yield
        return
    torch.get_num_threads()  # torch sets this thread's OpenMP thread count on first use: before ours
    before = gomp.omp_get_max_threads()
    gomp.omp_pause_resource_all(_OMP_PAUSE_HARD)
    gomp.omp_set_num_threads(1)  # this thread's setting only (an OpenMP per-thread variable)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(before)
        gomp.omp_pause_resource_all(_OMP_PAUSE_HARD)
