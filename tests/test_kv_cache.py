"""The preallocated batch cache against the obvious one: every join, decode step and leave gives the
same keys, values and mask as concatenating left-padded tensors would (the padding columns, hidden
by the mask, may hold anything finite)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from adapterhub.server.engine.kv_cache import BatchCache

LAYERS, HEADS, DIM = 2, 3, 4


def _prefill(rows: int, length: int, rng: torch.Generator) -> tuple[DynamicCache, torch.Tensor, list]:
    """A prefilled cache of ``rows`` left-padded rows, their mask, and per layer (keys, values)."""
    lengths = [int(torch.randint(1, length + 1, (1,), generator=rng)) for _ in range(rows)]
    mask = torch.zeros(rows, length, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, length - n:] = 1
    cache, kv = DynamicCache(), []
    for layer in range(LAYERS):
        k = torch.randn(rows, HEADS, length, DIM, generator=rng)
        v = torch.randn(rows, HEADS, length, DIM, generator=rng)
        cache.update(k, v, layer)
        kv.append((k, v))
    return cache, mask, kv


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(t, (0, 0, length - t.shape[2], 0))


def _assert_same(batch: BatchCache, mask: torch.Tensor, kv: list) -> None:
    assert torch.equal(batch.mask, mask)
    hidden = ~mask.bool()[:, None, :, None]
    for layer, (k, v) in zip(batch.cache.layers, kv):
        assert layer.keys.shape == k.shape and torch.isfinite(layer.keys).all()
        assert torch.equal(layer.keys.masked_fill(hidden, 0), k.masked_fill(hidden, 0))
        assert torch.equal(layer.values.masked_fill(hidden, 0), v.masked_fill(hidden, 0))


def test_joins_steps_and_leaves_match_concatenation():
    rng = torch.Generator().manual_seed(0)
    pick = random.Random(0)
    batch = BatchCache(torch.device("cpu"))
    mask = torch.zeros(0, 0, dtype=torch.long)
    kv: list = []
    for event in range(60):
        action = pick.choice(["join", "step", "step", "leave"]) if kv else "join"
        if action == "join":
            cache, new_mask, new_kv = _prefill(pick.randint(1, 3), pick.choice([1, 5, 40, 90]), rng)
            batch.join(cache, new_mask)
            length = max(mask.shape[1], new_mask.shape[1])
            mask = torch.cat([F.pad(mask, (length - mask.shape[1], 0)), F.pad(new_mask, (length - new_mask.shape[1], 0))])
            kv = [(torch.cat([_pad(k0, length), _pad(k1, length)]), torch.cat([_pad(v0, length), _pad(v1, length)]))
                  for (k0, v0), (k1, v1) in zip(kv or [(k[:0], v[:0]) for k, v in new_kv], new_kv)]
        elif action == "step":
            mask = batch.step_mask()
            new = [(torch.randn(mask.shape[0], HEADS, 1, DIM, generator=rng),
                    torch.randn(mask.shape[0], HEADS, 1, DIM, generator=rng)) for _ in range(LAYERS)]
            for i, (k, v) in enumerate(new):
                keys, values = batch.cache.update(k, v, i)
                assert keys.shape[2] == mask.shape[1]
            batch.mask = mask
            kv = [(torch.cat([k0, k1], 2), torch.cat([v0, v1], 2)) for (k0, v0), (k1, v1) in zip(kv, new)]
        else:
            keep = pick.sample(range(mask.shape[0]), pick.randint(0, mask.shape[0] - 1))  # any order
            batch.keep(keep)
            if not keep:
                assert batch.cache is None and batch.mask.shape == (0, 0)
                mask, kv = mask[:0, :0], []
                continue
            mask = mask[keep]
            drop = int(mask.any(0).nonzero()[0])
            mask = mask[:, drop:]
            kv = [(k[keep][:, :, drop:], v[keep][:, :, drop:]) for k, v in kv]
        _assert_same(batch, mask, kv)


def _fail(cache: DynamicCache, row: int, value: float) -> None:
    """Row ``row`` of a prefilled cache as a failed row leaves it: non-finite keys and values."""
    for layer in cache.layers:
        layer.keys[row] = value
        layer.values[row] = value


def _assert_finite(batch: BatchCache) -> None:
    for layer in batch.cache.layers:
        assert torch.isfinite(layer.keys).all() and torch.isfinite(layer.values).all()


def test_a_row_that_left_non_finite_values_poisons_no_later_row():
    """A row that failed with NaN keys leaves them in its buffer row; the next row to take that
    buffer row must not see them even under its mask (softmax weight 0 times a NaN value is NaN)."""
    rng = torch.Generator().manual_seed(1)
    batch = BatchCache(torch.device("cpu"))
    cache, _, _ = _prefill(2, 5, rng)
    _fail(cache, 1, float("inf"))
    batch.join(cache, torch.ones(2, 5, dtype=torch.long))
    batch.keep([0])
    short, _, _ = _prefill(1, 2, rng)
    batch.join(short, torch.ones(1, 2, dtype=torch.long))
    long_, _, _ = _prefill(1, 9, rng)  # longer than the window: the running rows' window widens
    batch.join(long_, torch.ones(1, 9, dtype=torch.long))
    _assert_finite(batch)


def test_a_row_moved_over_a_failed_one_sees_none_of_its_values():
    """A row moved into a failed row's place moves the window's columns only: the buffer row keeps
    the failed row's NaN left of the window, which must not reach the window when a longer prompt
    widens it."""
    rng = torch.Generator().manual_seed(2)
    batch = BatchCache(torch.device("cpu"))
    cache, _, _ = _prefill(3, 6, rng)
    _fail(cache, 1, float("nan"))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, :4] = mask[2, :4] = 0  # rows 0 and 2 are short: once row 1 leaves, columns 0-3 drop
    batch.join(cache, mask)
    batch.keep([0, 2])
    assert batch.mask.shape == (2, 2)
    long_, _, _ = _prefill(1, 12, rng)
    batch.join(long_, torch.ones(1, 12, dtype=torch.long))
    _assert_finite(batch)
