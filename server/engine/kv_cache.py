"""The running batch's key/value cache and attention mask, edited as rows join and leave.

Rows of different lengths share one cache with left padding: the mask hides the pads and explicit
position ids keep each row's positions what they would be alone, which is what makes a row's greedy
output equal to PEFT's ``generate`` for the same adapter. Joining rows left-pads the shorter of the
two caches; when rows leave, cache columns that became padding in every remaining row are dropped.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

__all__ = ["BatchCache", "left_pad_prompts"]


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


class BatchCache:
    """``cache`` (a ``DynamicCache`` the model appends to in place) and ``mask`` of the running rows."""

    def __init__(self, device: torch.device) -> None:
        self.cache: DynamicCache | None = None
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
        """Append freshly prefilled rows after the running ones, left-padding the shorter cache."""
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])
        self.cache = _new_cache([
            (torch.cat([_left_pad(k0, length), _left_pad(k1, length)], 0),
             torch.cat([_left_pad(v0, length), _left_pad(v1, length)], 0))
            for (k0, v0), (k1, v1) in zip(_layers(self.cache), _layers(cache))
        ])
        self.mask = torch.cat([_left_pad_mask(self.mask, length), _left_pad_mask(mask, length)], 0)

    def keep(self, indices: list[int]) -> None:
        """Shrink the batch to rows ``indices``, dropping columns that are now padding in every row."""
        if not indices:
            self.cache, self.mask = None, self.mask[:0, :0]
            return
        idx = torch.tensor(indices, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        used = mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        self.mask = mask[:, start:]
        self.cache = _new_cache([(k.index_select(0, idx)[:, :, start:], v.index_select(0, idx)[:, :, start:])
                                 for k, v in _layers(self.cache)])


def _new_cache(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A DynamicCache holding ``kv`` (per layer keys and values), or an empty one."""
    return DynamicCache(ddp_cache_data=kv) if kv else DynamicCache()


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(t, (0, 0, length - t.shape[2], 0))


def _left_pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(mask, (length - mask.shape[1], 0))
