"""Heterogeneous-batch LoRA: the model's LoRA weights in numbered slots, and which slot each row uses.

PEFT's mixed batch loops over the distinct adapters of a batch at every targeted layer, so its cost
grows with their number. Here every linear layer any LoRA may target is wrapped once, at start-up
(``layer``); an adapter is loaded by writing its weights into one slot of every layer it targets
(``loader``); before each forward the engine says which slot each batch row uses (``set_rows``),
and each layer adds one gathered low-rank update for the whole batch (``kernels``), whatever the
adapters of the rows.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import torch

from .layer import GatheredLoraLinear, wrap_linear_layers
from .loader import LoraPair, SlotLoader, read_lora_pairs
from .row_plan import BASE_ROW, RowPlans

if TYPE_CHECKING:
    from adapterhub.peft_format import AdapterConfig

    from ..model_loader import LoadedBase

__all__ = ["LoraSlotBank"]

_PARSED_KEPT = 256  # adapter headers remembered (a few hundred small objects each)


class LoraSlotBank:
    """Wraps every base module any LoRA may target, and owns the slots their weight stacks share.

    Args:
        loaded: the base model; its layers are wrapped in place.
        max_slots: how many adapters can be resident at once.
        max_rank: the largest LoRA rank a slot holds (smaller ranks are zero-padded).
        target_modules: module name suffixes to wrap (``["q_proj", "v_proj"]``, PEFT style); ``None``
            wraps every linear layer except the output head. An adapter touching a layer that is not
            wrapped is refused with ``IncompatibleBase``.
    """

    def __init__(self, loaded: LoadedBase, *, max_slots: int, max_rank: int,
                 target_modules: Iterable[str] | None = None) -> None:
        if max_slots < 1 or max_rank < 1:
            raise ValueError("max_slots and max_rank must be positive")
        self.loaded = loaded
        self.max_slots = max_slots
        self.max_rank = max_rank
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.plans = RowPlans(self.device)
        # Per slot: how many times its weights changed (a plan built before a change is stale).
        self._generation = [0] * max_slots
        self._occupied = [False] * max_slots
        self._lock = threading.Lock()
        self._loader = SlotLoader(self.device)
        self._parsed: OrderedDict[tuple, list[LoraPair]] = OrderedDict()  # see _pairs
        self._parsed_lock = threading.Lock()  # not _lock: a lookup must not wait for another load's copy
        self.modules: dict[str, GatheredLoraLinear] = wrap_linear_layers(
            loaded.model, target_modules, self.plans, slots=max_slots, rank=max_rank, dtype=self.dtype,
            device=self.device)
        if not self.modules:
            raise ValueError("no linear layer of the base matches target_modules")

    # --- slots ---------------------------------------------------------------------------------

    def slot_bytes(self) -> int:
        """Bytes one slot takes in the preallocated stacks (at max_rank, for every wrapped layer)."""
        return sum(self.max_rank * (m.in_features + m.out_features) for m in self.modules.values()) * self._width()

    def load(self, slot: int, config: AdapterConfig, weights_path: str) -> int:
        """Read a PEFT ``adapter_model.safetensors`` into ``slot``; return the bytes its weights take there.

        A refused adapter (``IncompatibleBase``, ``InvalidAdapter``, ``UnsupportedAdapter``, see
        ``loader.read_lora_pairs``) leaves the slot as it was.
        """
        self._check_slot(slot)
        pairs = self._pairs(config, weights_path)
        with self._lock:
            if self._occupied[slot]:
                self._release(slot)
            try:
                self._loader.write(slot, pairs, weights_path)
            except BaseException:
                self._release(slot)
                raise
            self._occupied[slot] = True
            self._changed(slot)
        return sum(p.slot_elements for p in pairs) * self._width()

    def _pairs(self, config: AdapterConfig, weights_path: str) -> list[LoraPair]:
        """``read_lora_pairs``, remembered per file version and config: an adapter evicted and loaded
        again, the everyday case of a server's LRU, skips parsing and checking its header again
        (3.7 of a 14 ms load). A file is known by its inode, size and modification time; its data
        are still read, and checked finite, at every load."""
        try:
            st = os.stat(weights_path)
        except OSError:  # read_lora_pairs says what is wrong with the file, as an InvalidAdapter
            return read_lora_pairs(config, weights_path, self.modules, max_rank=self.max_rank, base=self.loaded.name)
        key = (str(weights_path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
               json.dumps(config.raw, sort_keys=True, default=str))
        with self._parsed_lock:
            pairs = self._parsed.get(key)
            if pairs is not None:
                self._parsed.move_to_end(key)
                return pairs
        pairs = read_lora_pairs(config, weights_path, self.modules, max_rank=self.max_rank, base=self.loaded.name)
        with self._parsed_lock:
            self._parsed[key] = pairs
            while len(self._parsed) > _PARSED_KEPT:
                self._parsed.popitem(last=False)
        return pairs

    def free(self, slot: int) -> None:
        """Empty ``slot`` (its weights are zeroed) so another adapter can be loaded into it."""
        self._check_slot(slot)
        with self._lock:
            if self._occupied[slot]:
                self._release(slot)
                self._changed(slot)

    def occupied(self, slot: int) -> bool:
        self._check_slot(slot)
        return self._occupied[slot]

    def _release(self, slot: int) -> None:
        for group in {id(m.group): m.group for m in self.modules.values()}.values():
            used = [m for m in group.members if m.ranks[slot]]
            if used:
                group.a_store[slot].zero_()  # the members' A one above the other: one contiguous block
            for m in used:
                m.slot(slot)[1][:, : m.ranks[slot]].zero_()
                m.ranks[slot] = 0
        self._occupied[slot] = False

    def _changed(self, slot: int) -> None:
        self._generation[slot] += 1
        self.plans.slot_changed(slot)

    def _check_slot(self, slot: int) -> None:
        if not isinstance(slot, int) or not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot!r} out of range 0..{self.max_slots - 1}")

    def _width(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    # --- batch rows ----------------------------------------------------------------------------

    def set_rows(self, slot_per_row: torch.Tensor | Sequence[int] | None) -> None:
        """Say which slot each batch row uses for the next forward (``-1``: the bare base).

        Rows equal to the last ones set (and slots unchanged since) reuse the gathered weights built
        for them, so calling this before every decode step costs nothing while batch membership is
        unchanged, even with ``rows()`` scopes in between.
        ``None`` (or all ``-1``) runs the bare base with no LoRA work at all.
        """
        if slot_per_row is None:
            self.plans.clear()
            return
        rows = tuple(int(r) for r in (slot_per_row.tolist() if isinstance(slot_per_row, torch.Tensor) else slot_per_row))
        distinct = tuple(sorted({r for r in rows if r != BASE_ROW}))
        for s in distinct:
            if not 0 <= s < self.max_slots or not self._occupied[s]:
                raise ValueError(f"row uses slot {s}, which holds no adapter")
        self.plans.use(rows, distinct, tuple(self._generation[s] for s in distinct))

    @contextmanager
    def rows(self, slot_per_row: torch.Tensor | Sequence[int] | None) -> Iterator[None]:
        """``set_rows`` for the duration of a ``with`` block; the previous rows come back after it."""
        with self.plans.scoped():
            self.set_rows(slot_per_row)
            yield
