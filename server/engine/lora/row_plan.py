"""The batch as the wrapped layers see it: which slot each row uses, and the updates built for that.

The slot bank sets the rows before each forward; every wrapped layer reads the current plan and
caches the update it builds in it, so the planning work is done once per batch membership, not
once per decode step. A plan whose slots were rewritten after it was set is marked stale and
refused, rather than silently computing with the new adapter's weights.

The rows are grouped by adapter (``RowGroups``): the update runs as one batched product whose
batch is the distinct adapters, each reading its weights once however many rows use it.

A plan is data: the kernels (``kernels``) read it and store the updates they build in it, and the
wrapped layers (``layer``) call those updates. It imports neither module, so the dependency runs
one way, layer -> kernels -> row_plan.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

__all__ = ["BASE_ROW", "RowGroups", "RowPlan", "RowPlans", "Update"]

BASE_ROW = -1  # a row that uses no adapter

# What a layer adds for the plan's rows: ``update(x, out)`` returns ``out`` plus the LoRA update
# (``kernels.LayerUpdate`` or ``kernels.RowByRowUpdate``).
Update = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RowGroups:
    """The batch's rows grouped by slot: group ``g`` is ``distinct[g]``'s rows, padded to ``m`` rows
    (``distinct`` in any order, e.g. the rows' own slots in row order when no two rows share one).

    A product over the groups reads each distinct adapter's weights once, straight from the slot
    stacks when the distinct slots are consecutive (``first``), else from one copy per plan of the
    distinct slots (``sel``), never one copy per row. Base rows belong to no group and get no update.
    Three layouts, cheapest first: ``direct`` (row ``g`` is group ``g``: nothing moves), ``full``
    (every row in a group, groups of equal size: the rows are permuted, ``order`` / ``inverse``),
    padded (uneven groups or base rows: ``src`` rows go to padded places ``pos``).
    """

    __slots__ = ("k", "m", "direct", "order", "inverse", "src", "pos", "first", "sel")

    def __init__(self, rows: tuple[int, ...], distinct: tuple[int, ...], device: torch.device) -> None:
        self.k = len(distinct)
        group_of = {s: g for g, s in enumerate(distinct)}
        members: list[list[int]] = [[] for _ in distinct]
        for row, slot in enumerate(rows):
            if slot != BASE_ROW:
                members[group_of[slot]].append(row)
        self.m = max(len(rs) for rs in members)
        self.direct = rows == distinct
        self.order = self.inverse = self.src = self.pos = None
        if not self.direct and all(len(rs) == self.m for rs in members) and self.k * self.m == len(rows):
            order = [row for rs in members for row in rs]  # padded place -> row
            inverse = [0] * len(order)
            for place, row in enumerate(order):
                inverse[row] = place
            self.order = torch.tensor(order, dtype=torch.long, device=device)
            self.inverse = torch.tensor(inverse, dtype=torch.long, device=device)
        elif not self.direct:
            pairs = [(row, g * self.m + i) for g, rs in enumerate(members) for i, row in enumerate(rs)]
            self.src = torch.tensor([r for r, _ in pairs], dtype=torch.long, device=device)
            self.pos = torch.tensor([p for _, p in pairs], dtype=torch.long, device=device)
        consecutive = distinct == tuple(range(distinct[0], distinct[0] + self.k))
        self.first = distinct[0] if consecutive else None
        self.sel = None if consecutive else torch.tensor(distinct, dtype=torch.long, device=device)

    def pick(self, stack: torch.Tensor) -> torch.Tensor:
        """``stack [slots, ...]`` -> ``[k, ...]``, the distinct slots in group order."""
        if self.first is not None:
            return stack[self.first : self.first + self.k]
        return stack.index_select(0, self.sel)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``x [rows, ..., in]`` -> ``[k, m * tokens, in]``: each group's rows, zero-padded."""
        x3 = x if x.dim() == 3 else x.reshape(x.shape[0], -1, x.shape[-1])
        if self.direct:
            return x3
        if self.order is not None:
            return x3.index_select(0, self.order).view(self.k, -1, x3.shape[2])
        xg = x3.new_zeros(self.k * self.m, x3.shape[1], x3.shape[2])
        xg.index_copy_(0, self.pos, x3.index_select(0, self.src))
        return xg.view(self.k, -1, x3.shape[2])

    def add_product(self, out: torch.Tensor, h: torch.Tensor, b: torch.Tensor) -> None:
        """``out [rows, ..., n] +=`` each adapter row's ``h @ b`` (``h [k, m * tokens, r]``, ``b [k, r, n]``),
        in place; ``out`` must be contiguous."""
        out3 = out if out.dim() == 3 else out.view(out.shape[0], -1, out.shape[-1])
        if self.direct:
            out3.baddbmm_(h, b)
            return
        y = torch.bmm(h, b).view(self.k * self.m, -1, out.shape[-1])
        if self.inverse is not None:
            out3.add_(y.index_select(0, self.inverse))
        else:
            out3.index_add_(0, self.src, y.index_select(0, self.pos))


@dataclass
class RowPlan:
    """Fixed between two ``RowPlans.use`` calls that differ."""

    rows: tuple[int, ...]
    versions: tuple[int, ...]  # each distinct slot's generation when the plan was made
    groups: RowGroups
    distinct: tuple[int, ...]
    stale: str | None = None
    row_slots: torch.Tensor = field(init=False)  # ``rows`` as int64 (BASE_ROW for base rows), for native_delta
    # wrapped layer -> its update, None for a layer no adapter of the batch targets
    updates: dict[object, Update | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.row_slots = torch.tensor(self.rows, dtype=torch.int64)


class RowPlans:
    """The plan of the next forward (``current``), shared by the slot bank and every wrapped layer.

    Args:
        device: where the row indices live.
    """

    def __init__(self, device: torch.device) -> None:
        self.current: RowPlan | None = None
        self._memo: RowPlan | None = None  # the last plan built, reused while the same rows come back
        self._device = device

    def use(self, rows: tuple[int, ...], distinct: tuple[int, ...], versions: tuple[int, ...]) -> None:
        """Make the plan for ``rows`` current (no adapter rows at all: no plan, the bare base)."""
        if not distinct:
            self.current = None
            return
        memo = self._memo
        if memo is not None and memo.stale is None and memo.rows == rows and memo.versions == versions:
            self.current = memo
            return
        # Every row on an adapter of its own: the groups are the rows, in row order (the adapters'
        # weights in that order are a view of the stacks when their slots are consecutive, else one
        # copy per plan), so no row moves at any step. Otherwise the rows are grouped by slot.
        own = len(distinct) == len(rows) and BASE_ROW not in rows
        groups = RowGroups(rows, rows if own else distinct, self._device)
        self.current = self._memo = RowPlan(rows, versions, groups, distinct)

    def clear(self) -> None:
        self.current = None

    def slot_changed(self, slot: int) -> None:
        """Refuse plans that gathered ``slot`` before its weights changed."""
        for plan in (self.current, self._memo):
            if plan is not None and slot in plan.distinct:
                plan.stale = f"adapter slot {slot} changed after set_rows(); call set_rows() again"

    @contextmanager
    def scoped(self) -> Iterator[None]:
        """The current plan comes back after the ``with`` block, whatever was set inside it."""
        previous = self.current
        try:
            yield
        finally:
            self.current = previous
