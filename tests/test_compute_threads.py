"""Torch's OpenMP workers stay on the engine loop's thread: other threads give theirs back."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from adapterhub.server.engine import compute_threads

needs_pool = pytest.mark.skipif(
    torch.get_num_threads() < 2 or compute_threads._libgomp() is None or not os.path.isdir("/proc/self/task"),
    reason="needs torch on libgomp with at least 2 threads (Linux)",
)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _in_new_thread(work) -> list[int]:
    """Run ``work(counts)`` in a fresh thread (a pool of its own), after a parallel op there."""
    counts: list[int] = []

    def run() -> None:
        torch.set_num_threads(2)
        torch.ones(4_000_000).mul(2).sum()  # large enough to run on the OpenMP workers
        counts.append(_threads())
        work(counts)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return counts


@needs_pool
def test_release_frees_the_calling_threads_workers_and_the_next_op_rebuilds_them() -> None:
    def work(counts: list[int]) -> None:
        compute_threads.release_thread_pool()
        counts.append(_threads())
        assert torch.arange(4_000_000, dtype=torch.float64).sum().item() == 4_000_000 * 3_999_999 / 2
        counts.append(_threads())

    with_pool, released, rebuilt = _in_new_thread(work)
    assert released == with_pool - 1  # the one worker of a 2-thread pool is gone
    assert rebuilt == with_pool  # and comes back with the next parallel op, results unchanged


@needs_pool
def test_single_threaded_block_starts_no_workers_and_gives_back_any_there_were() -> None:
    def work(counts: list[int]) -> None:
        with compute_threads.single_threaded():
            counts.append(_threads())  # the pool of the op before the block is gone
            assert torch.get_num_threads() == 1
            assert torch.arange(4_000_000, dtype=torch.float64).sum().item() == 4_000_000 * 3_999_999 / 2
            counts.append(_threads())
        counts.append(torch.get_num_threads())

    with_pool, inside, after_op, threads_after = _in_new_thread(work)
    assert inside == after_op == with_pool - 1  # a large op inside started no worker
    assert threads_after == 2  # the thread's own setting comes back


@needs_pool
def test_single_threaded_block_restores_the_setting_when_it_raises() -> None:
    def work(counts: list[int]) -> None:
        with pytest.raises(RuntimeError), compute_threads.single_threaded():
            raise RuntimeError("load failed")
        counts.append(torch.get_num_threads())

    _, threads_after = _in_new_thread(work)
    assert threads_after == 2


def test_release_without_a_pool_is_harmless() -> None:
    compute_threads.release_thread_pool()
    compute_threads.release_thread_pool()
    assert torch.ones(3).sum().item() == 3
