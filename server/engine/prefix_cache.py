"""Prefix KV reuse: the keys and values of prompt prefixes already prefilled, kept for the next request.

Traffic repeats long prefixes: an application's system prompt, a chat history that grows by one
turn a request, a prompt template's few-shot examples rendered in front of every request. A
request's keys and values over a prefix depend only on the base, the adapter that computed them and
the prefix's tokens, so they are keyed by exactly that: the adapter's *content* digest (a LoRA's or a
soft prompt's manifest digest, never its name, so reloading other weights under the same name or
moving a tag can never reuse old KV; a base row's key has no adapter, so it never meets a LoRA's),
then the sequence in blocks of ``BLOCK_TOKENS``, each block's key a hash of the one before it and its
own tokens (vLLM's automatic prefix caching does the same chain with the LoRA's *name*; vllm#42125 is
what that costs). A soft prompt's virtual tokens are the first items of its sequence (as ids
``-1..-V``), so they are inside every block's key. A prompt template is text in front of the
prompt: its rows are base rows (or LoRA rows) whose prefix blocks the base's (the LoRA's) requests
share, a zero-parameter adapter that costs nothing after its first request.

Entries are whole blocks, each ``[layers, 2, kv heads, BLOCK_TOKENS, head dim]``, in one LRU
bounded by bytes (``--prefix-cache-bytes``, ``EngineConfig.prefix_cache_bytes``; 0 turns the cache
off). A lookup walks a request's blocks from the first and stops at the first miss; what it finds
is reused up to all but the prompt's last item
(whose logits give the first token), so a prefix that ends mid-block reuses the blocks before it and
a prompt that is wholly cached prefills one token. Entries are stored only from rows whose prefill
succeeded with finite values, and from finished answers (prompt and generated tokens), so a chat's
next turn finds its history.

On a CPU the reused prefix changes nothing: every linear kernel computes a token alone and the
attention kernel takes a query's keys in key order whether they came from one prefill or several
(``attention``), so tokens and logprobs are bit for bit those of a full prefill. On a GPU (SDPA and
cuBLAS reduce in shape-dependent orders) they agree within rounding, as vLLM's do.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # torch comes with the engine, not with this module (engine.py's errors are light)
    import torch

__all__ = ["PrefixCache", "PrefixHit", "PrefixCacheStats", "BLOCK_TOKENS", "sequence_items"]

# (lo, hi) -> items lo:hi's keys and values, one [kv heads, hi - lo, dim] pair per layer
Gather = Callable[[int, int], "tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]"]

BLOCK_TOKENS = 16  # vLLM's block size: fine enough that a prefix ending mid-block loses little


def sequence_items(prompt_ids: Sequence[int], virtual_tokens: int) -> list[int]:
    """What a row's KV covers, in order: a soft prompt's virtual tokens (``-1..-V``), then its prompt."""
    return [-(i + 1) for i in range(virtual_tokens)] + list(prompt_ids)


@dataclass(frozen=True)
class PrefixHit:
    """A cached prefix: its first ``items`` items' keys and values, one ``[kv heads, items, dim]``
    pair per layer."""

    items: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


@dataclass
class PrefixCacheStats:
    """Counters since start: lookups and those that reused something; items looked up and reused;
    blocks stored and evicted."""

    queries: int = 0
    hits: int = 0
    tokens_queried: int = 0
    tokens_reused: int = 0
    blocks_stored: int = 0
    blocks_evicted: int = 0


class PrefixCache:
    """The bounded block store; called from the engine thread, read (stats, sizes) from any thread.

    Args:
        max_bytes: most bytes of keys and values held; the least recently used blocks go first.
        salt: what every key starts with besides the adapter: the base's identity and how it computes
            (fingerprint, quantization), so entries could never cross bases even if caches were shared.
    """

    def __init__(self, max_bytes: int, *, salt: str = "", block_tokens: int = BLOCK_TOKENS) -> None:
        if max_bytes <= 0:
            raise ValueError("a prefix cache needs a positive byte bound (0 means no cache: build none)")
        if block_tokens <= 0:
            raise ValueError("block_tokens must be positive")
        self.max_bytes = max_bytes
        self.block_tokens = block_tokens
        self._salt = salt.encode()
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = PrefixCacheStats()

    @property
    def bytes_resident(self) -> int:
        return self._bytes

    @property
    def blocks_resident(self) -> int:
        return len(self._blocks)

    def root(self, adapter_digest: str | None) -> bytes:
        """The key every block of a row with this adapter (``None``: the bare base) chains from."""
        return hashlib.blake2b(self._salt + b"\0" + (adapter_digest or "").encode(), digest_size=16).digest()

    def _chain(self, root: bytes, items: Sequence[int], blocks: int) -> list[bytes]:
        keys, key, n = [], root, self.block_tokens
        for b in range(blocks):
            key = hashlib.blake2b(key + array("q", items[b * n:(b + 1) * n]).tobytes(), digest_size=16).digest()
            keys.append(key)
        return keys

    def lookup(self, root: bytes, items: Sequence[int]) -> PrefixHit | None:
        """The longest cached prefix of ``items`` under ``root``, at most ``len(items) - 1`` long."""
        usable = len(items) - 1
        self.stats.queries += 1
        self.stats.tokens_queried += len(items)
        found: list[torch.Tensor] = []
        with self._lock:
            chain = self._chain(root, items, len(items) // self.block_tokens)
            for key in chain:
                block = self._blocks.get(key)
                if block is None:
                    break
                found.append(block)
            self._touch(chain[:len(found)])
        if not found:
            return None
        import torch

        reused = min(len(found) * self.block_tokens, usable)
        kv = torch.cat(found, dim=3)[:, :, :, :reused] if len(found) > 1 else found[0][:, :, :, :reused]
        self.stats.hits += 1
        self.stats.tokens_reused += reused
        return PrefixHit(reused, list(kv[:, 0].unbind(0)), list(kv[:, 1].unbind(0)))

    def store(self, root: bytes, items: Sequence[int], gather: Gather) -> int:
        """Keep the whole blocks of ``items`` not held yet; ``gather(lo, hi)`` gives items ``lo:hi``'s
        keys and values, one ``[kv heads, hi - lo, dim]`` pair per layer, and is called only for the
        blocks missing (a finished answer's prompt blocks are usually held already). Blocks with a
        non-finite value are never kept. The number of blocks stored."""
        import torch

        whole = len(items) // self.block_tokens
        if whole == 0:
            return 0
        chain = self._chain(root, items, whole)
        with self._lock:
            missing = [b for b, key in enumerate(chain) if key not in self._blocks]
        n = self.block_tokens
        stored = 0
        for b in missing:
            keys, values = gather(b * n, (b + 1) * n)
            block = torch.stack([torch.stack([k, v]) for k, v in zip(keys, values)]).contiguous()
            if block.nbytes > self.max_bytes or not bool(torch.isfinite(block).all()):
                chain = chain[:b]  # a later block chains from this one: without it, none is found
                break
            with self._lock:
                if chain[b] not in self._blocks:
                    self._blocks[chain[b]] = block
                    self._bytes += block.nbytes
                    stored += 1
        with self._lock:
            self._touch(chain)
            self._evict()
        self.stats.blocks_stored += stored
        return stored

    def _touch(self, chain: list[bytes]) -> None:
        """Mark a chain's blocks used, its first block last: eviction then takes a chain's deepest
        blocks first, never a first block that the rest need to be found."""
        for key in reversed(chain):
            if key in self._blocks:
                self._blocks.move_to_end(key)

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self._bytes -= block.nbytes
            self.stats.blocks_evicted += 1

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0
