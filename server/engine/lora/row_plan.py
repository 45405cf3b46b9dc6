"""The batch as the wrapped layers see it: which slot each row uses, and the updates built for that.

The slot bank sets the rows before each forward; every wrapped layer reads the current plan and
caches the update it builds in it, so the gathering work is done once per batch membership, not
once per decode step. A plan whose slots were rewritten after it was set is marked stale and
refused, rather than silently computing with the new adapter's weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:
    from .kernels import LayerUpdate
    from .layer import GatheredLoraLinear

__all__ = ["BASE_ROW", "RowPlan", "RowPlans"]

BASE_ROW = -1  # a row that uses no adapter


@dataclass
class RowPlan:
    """Fixed between two ``RowPlans.use`` calls that differ."""

    rows: tuple[int, ...]
    versions: tuple[int, ...]  # each distinct slot's generation when the plan was made
    idx: torch.Tensor  # [rows] slot per row on the device, BASE_ROW mapped to the zero slot
    distinct: tuple[int, ...]
    stale: str | None = None
    # (layer, decode?) -> its update, None for a layer no adapter of the batch targets
    updates: dict[tuple[GatheredLoraLinear, bool], LayerUpdate | None] = field(default_factory=dict)


class RowPlans:
    """The plan of the next forward (``current``), shared by the slot bank and every wrapped layer.

    Args:
        zero_slot: the index of the all-zero slot base rows gather from.
        device: where the row index lives.
    """

    def __init__(self, zero_slot: int, device: torch.device) -> None:
        self.current: RowPlan | None = None
        self._memo: RowPlan | None = None  # the last plan built, reused while the same rows come back
        self._zero_slot = zero_slot
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
        idx = torch.tensor([self._zero_slot if r == BASE_ROW else r for r in rows], dtype=torch.long,
                           device=self._device)
        self.current = self._memo = RowPlan(rows, versions, idx, distinct)

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
