"""The running batch's key/value cache and attention mask, edited as rows join and leave.

Rows of different lengths share one cache with left padding: the mask hides the pads and explicit
position ids keep each row's positions what they would be alone, which is what makes a row's greedy
output equal to PEFT's ``generate`` for the same adapter.

The cache lives in preallocated buffers (``_SlabLayer``), one pair per decoder layer, with room
for more rows and for columns on both sides of the ones in use. A decode step writes one column in
place where transformers' ``DynamicCache`` would copy the whole cache (``torch.cat``) in every
layer; rows joining are written into free rows (a shorter prompt right-aligned, a longer one
extending the used columns to the left); when rows leave, only rows whose place changes move (the
scheduler fills a leaving row's place with one of the last rows), and columns that became padding
in every remaining row are dropped by moving the start. The buffers are re-laid out (a copy) only
when rows or columns run out, doubling the room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

if TYPE_CHECKING:
    from .prefix_cache import PrefixHit

__all__ = ["BatchCache", "left_pad_prompts", "place_prefixes"]

_MIN_COLUMNS = 64  # room a fresh layout leaves on each side of the used columns, at least
_MIN_ROWS = 4  # rows a fresh layout holds, at least


def left_pad_prompts(pieces: Sequence[torch.Tensor],
                     pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt embeddings (``[tokens, hidden]`` each) as one left-padded batch for a prefill pass:
    ``(embeds [rows, length, hidden], mask [rows, length], positions [rows, length])``."""
    length = max(p.shape[0] for p in pieces)
    hidden = pieces[0].shape[1]
    embeds = pad.expand(len(pieces), length, hidden).clone()
    mask = torch.zeros((len(pieces), length), dtype=torch.long, device=pad.device)
    for i, p in enumerate(pieces):
        embeds[i, length - p.shape[0]:] = p
        mask[i, length - p.shape[0]:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask, positions


def place_prefixes(cache: DynamicCache, prefixes: Sequence[PrefixHit | None]) -> torch.Tensor:
    """Write cached prefixes (``prefix_cache.PrefixHit``, ``None`` for a row without one) into an
    empty prefill cache, each right-aligned in a window as wide as the longest; the window's mask
    ``[rows, width]``. The prefill then appends the rest of each prompt after it."""
    some = next(p for p in prefixes if p is not None)
    width = max(p.items for p in prefixes if p is not None)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long, device=some.keys[0].device)
    for layer, (k0, v0) in enumerate(zip(some.keys, some.values)):
        keys = k0.new_zeros(len(prefixes), k0.shape[0], width, k0.shape[2])
        values = v0.new_zeros(len(prefixes), v0.shape[0], width, v0.shape[2])
        for row, p in enumerate(prefixes):
            if p is not None:
                keys[row, :, width - p.items:] = p.keys[layer]
                values[row, :, width - p.items:] = p.values[layer]
        cache.update(keys, values, layer)
    for row, p in enumerate(prefixes):
        if p is not None:
            mask[row, width - p.items:] = 1
    return mask


class _SlabLayer(DynamicLayer):
    """One decoder layer's keys and values in ``[row room, heads, column room, dim]`` buffers; the
    batch is rows ``[:rows]``, columns ``[start:end]`` (``keys`` / ``values`` are views of them).

    Buffers start zeroed, and columns that join the window unwritten are zeroed, so every column
    that is padding for a row holds a finite value the mask hides.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        rows, heads, length, dim = keys.shape
        self.is_initialized = True
        self.device = keys.device
        self._k = keys.new_zeros(_row_room(rows), heads, length + 2 * _room(length), dim)
        self._v = values.new_zeros(self._k.shape[:3] + values.shape[3:])
        self.rows, self.start, self.end = rows, _room(length), _room(length) + length
        self._k[:rows, :, self.start:self.end] = keys
        self._v[:rows, :, self.start:self.end] = values
        self._views()

    def _views(self) -> None:
        self.keys = self._k[: self.rows, :, self.start : self.end]
        self.values = self._v[: self.rows, :, self.start : self.end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a decode step's new columns in place (re-laying out only when the room runs out)."""
        new = key_states.shape[2]
        if self.end + new > self._k.shape[2]:
            self._relayout(self.rows, self.end - self.start + new)
        self._k[: self.rows, :, self.end : self.end + new] = key_states
        self._v[: self.rows, :, self.end : self.end + new] = value_states
        self.end += new
        self._views()
        return self.keys, self.values

    def append_rows(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add rows after the running ones, right-aligned with them (their columns end at ``end``)."""
        added, length = keys.shape[0], keys.shape[2]
        if self.rows + added > self._k.shape[0] or self.end - length < 0:
            self._relayout(self.rows + added, max(length, self.end - self.start))
        first = self.end - length
        start = min(self.start, first)
        # Columns that become part of the batch's window without being written (left of ``first``
        # for the new rows, left of the old start for the running ones) may hold values of rows
        # that have left. The mask hides them from attention, but a hidden NaN still poisons it
        # (0 * NaN), and a row that failed with non-finite logits leaves NaN behind: zero them.
        for buf in (self._k, self._v):
            buf[: self.rows, :, start : self.start] = 0
            buf[self.rows : self.rows + added, :, start:first] = 0
        self._k[self.rows : self.rows + added, :, first : self.end] = keys
        self._v[self.rows : self.rows + added, :, first : self.end] = values
        self.rows += added
        self.start = start
        self._views()

    def keep_rows(self, indices: list[int], drop_columns: int) -> None:
        """Make row ``i`` the old row ``indices[i]`` (any order), moving only the rows whose place
        changes, and drop the first ``drop_columns`` columns. Only the window's columns move (a
        third of the buffers' or less): whatever lies outside it is zeroed before it joins the
        window again."""
        moves = [(i, r) for i, r in enumerate(indices) if r != i]
        self.start += drop_columns
        in_place = all(r >= len(indices) for _, r in moves)  # no source is overwritten by another move
        for buf in (self._k, self._v):
            window = buf[:, :, self.start : self.end]
            if in_place:
                for i, r in moves:
                    window[i].copy_(window[r])
            else:
                to, src = (torch.tensor(side, device=buf.device) for side in zip(*moves))
                window.index_copy_(0, to, window.index_select(0, src))
        self.rows = len(indices)
        self._views()

    def _relayout(self, rows: int, length: int) -> None:
        """New buffers with room for ``rows`` rows and ``length`` used columns (and as much again on
        each side); the running rows' used columns are copied, right-aligned at the new ``end``."""
        used = self.end - self.start
        start, end = _room(length) + length - used, _room(length) + length
        k = self._k.new_zeros(max(_row_room(rows), self._k.shape[0]), self._k.shape[1], length + 2 * _room(length),
                              self._k.shape[3])
        v = self._v.new_zeros(k.shape[:3] + self._v.shape[3:])
        k[: self.rows, :, start:end] = self.keys
        v[: self.rows, :, start:end] = self.values
        self._k, self._v, self.start, self.end = k, v, start, end
        self._views()


def _row_room(n: int) -> int:
    """Rows a fresh layout holds for ``n`` rows: twice as many (rows join one prefill at a time), at
    least ``_MIN_ROWS``. Room for 64 rows whatever the batch made a lone 600-token prompt's cache
    5 GB of zeroed memory on SmolLM2-135M: 1.3 s of its 1.5 s answer went to allocating and freeing it."""
    return max(2 * n, _MIN_ROWS)


def _room(n: int) -> int:
    """Room for ``n`` used entries in a fresh layout: at least as much again, never under the minimum."""
    return max(n, _MIN_COLUMNS)


class BatchCache:
    """``cache`` (a transformers ``Cache`` the model writes to in place) and ``mask`` of the running rows."""

    def __init__(self, device: torch.device) -> None:
        self.cache: Cache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)

    @staticmethod
    def empty() -> DynamicCache:
        """A cache for a prefill pass, joined to the batch afterwards."""
        return DynamicCache()

    def step_mask(self) -> torch.Tensor:
        """The mask for a decode step: every row attends to its new token."""
        ones = torch.ones((self.mask.shape[0], 1), dtype=torch.long, device=self.mask.device)
        return torch.cat([self.mask, ones], 1)

    def join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append freshly prefilled rows after the running ones, left-padding the shorter of the two."""
        prefilled = [(layer.keys, layer.values) for layer in cache.layers]
        if self.cache is None:
            self.cache = Cache(layers=[_SlabLayer(k, v) for k, v in prefilled])
            self.mask = mask
            return
        for layer, (k, v) in zip(self.cache.layers, prefilled):
            layer.append_rows(k, v)
        length = max(self.mask.shape[1], mask.shape[1])
        self.mask = torch.cat([_left_pad_mask(self.mask, length), _left_pad_mask(mask, length)], 0)

    def keep(self, indices: list[int]) -> None:
        """Shrink the batch to rows ``indices`` (row ``i`` becomes the old row ``indices[i]``),
        dropping columns that are now padding in every row."""
        if not indices:
            self.cache, self.mask = None, self.mask[:0, :0]
            return
        mask = self.mask[indices]
        used = mask.any(0).nonzero()
        drop = int(used[0]) if used.numel() else mask.shape[1]
        self.mask = mask[:, drop:]
        for layer in self.cache.layers:
            layer.keep_rows(indices, drop)


def _left_pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (length - mask.shape[1], 0))
