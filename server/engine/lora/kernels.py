"""How a batch's LoRA update is computed: one batched product over the batch's distinct adapters.

From the row plan, once per batch membership (not per step), each layer takes its distinct
adapters' A and B from the slot stacks (views when the slots are consecutive, else one copy of
those slots per plan: never one copy per row) and the update is

    h = bmm(x grouped by adapter, A^T)     out += bmm(h, B^T) scattered back to the rows

so every adapter's weights are read once per step, however many rows use it, with no mask and no
flops spent on other adapters' blocks. When every row has an adapter of its own, the groups are
the rows themselves: nothing is gathered at any step and the B product is accumulated into the base
output in place (``baddbmm_``).

Layers that read the same input (q/k/v, gate/up) keep their A stacks one above the other in one tensor
(``InputGroup.a_store``), so their A products are one ``bmm``; the number of extra kernels per
decoder layer does not grow with the number of adapters. Base rows get no update at all, and a
row's result is its adapter's ``scale * B @ A @ x`` up to float rounding, whatever else is in the
batch. Layers that no adapter of the batch targets are skipped, and each works at the largest rank
its adapters use.

On a float32 CPU base the two products are ``native_delta``'s instead, row by row in one fixed
order (``RowByRowUpdate``): there a row's update must not depend on its batch mates, since the
next quantized layer turns a float32 rounding into a whole rounding step.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ..shared_input import OncePerInput
from . import native_delta
from .row_plan import RowGroups, RowPlan

__all__ = ["GroupMember", "InputGroup", "LayerUpdate", "RowByRowUpdate"]


class GroupMember(Protocol):
    """What an input group reads of each of its layers (``layer.GatheredLoraLinear`` is one): the
    kernels are written against this, not against the layer, so the layer imports the kernels and
    never the other way."""

    ranks: list[int]  # rank each slot holds for this layer (0: nothing)
    a_row: int  # where the layer's rows start in the group's ``a_store``
    lora_B: torch.Tensor  # [slots, out_features, max_rank]


class InputGroup:
    """Wrapped layers that read the same input (q/k/v, gate/up): their A products run as one.

    ``a_store [slots, members * max_rank, in]`` holds the members' A stacks one above the other
    (each member's ``lora_A`` is a view of its rows, from ``a_row``). The first member called with
    an input computes the low-rank activations of every member; the others, called with that same
    tensor object, take their slice (``OncePerInput``).
    """

    def __init__(self, members: list[GroupMember], a_store: torch.Tensor) -> None:
        self.members = members
        self.a_store = a_store

    def prepare(self, plan: RowPlan) -> None:
        """Build every member's update for ``plan`` (once per plan)."""
        ranks = {m: max(m.ranks[s] for s in plan.distinct) for m in self.members}
        users = [m for m in self.members if ranks[m]]
        for m in self.members:
            if not ranks[m]:
                plan.updates[m] = None  # no adapter of the batch targets it
        if not users:
            return
        first, last = users[0].a_row, users[-1].a_row + ranks[users[-1]]
        if native_delta.available(self.a_store):
            a = self.a_store[:, first:last]
            down = OncePerInput(lambda x: native_delta.lora_down(x, plan.row_slots, a))
            for m in users:
                plan.updates[m] = RowByRowUpdate(down, down.join(), m.a_row - first, ranks[m], plan.row_slots,
                                                 m.lora_B)
            return
        # Transposed views, made once per plan: [k, in, width] and [k, rank, out].
        down = OncePerInput(_down_product(plan.groups.pick(self.a_store[:, first:last]).transpose(1, 2), plan.groups))
        for m in users:
            lo = m.a_row - first
            b = plan.groups.pick(m.lora_B[:, :, : ranks[m]]).transpose(1, 2)
            whole = lo == 0 and ranks[m] == last - first  # the member's columns are all of h: no slice
            plan.updates[m] = LayerUpdate(down, down.join(), None if whole else slice(lo, lo + ranks[m]), b,
                                          plan.groups)


def _down_product(a: torch.Tensor, groups: RowGroups) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x`` -> the low-rank activations ``[k, m * tokens, width]`` of every member of an input group."""
    def down(x: torch.Tensor) -> torch.Tensor:
        xg = groups.gather(x)
        return torch.bmm(xg if xg.dtype == a.dtype else xg.to(a.dtype), a)

    return down


class LayerUpdate:
    """One member's B product, added into the base output (in place where the dtypes allow)."""

    __slots__ = ("down", "member", "columns", "b", "groups")

    def __init__(self, down: OncePerInput, member: int, columns: slice | None, b: torch.Tensor,
                 groups: RowGroups) -> None:
        self.down, self.member, self.columns, self.b, self.groups = down, member, columns, b, groups

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self.down(x, self.member)
        if self.columns is not None:
            h = h[..., self.columns]
        groups = self.groups
        if out.dtype == self.b.dtype and out.is_contiguous() and not out.requires_grad:
            groups.add_product(out, h, self.b)
            return out
        delta = torch.zeros(out.shape, dtype=self.b.dtype, device=out.device)
        groups.add_product(delta, h, self.b)
        return out + delta.to(out.dtype)


class RowByRowUpdate:
    """One member's B product on a float32 CPU base, each row with its own slot (``native_delta``)."""

    __slots__ = ("down", "member", "lo", "rank", "slots", "b")

    def __init__(self, down: OncePerInput, member: int, lo: int, rank: int, slots: torch.Tensor,
                 b: torch.Tensor) -> None:
        self.down, self.member, self.lo, self.rank, self.slots, self.b = down, member, lo, rank, slots, b

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self.down(x, self.member)
        if out.dtype == torch.float32 and out.is_contiguous() and not out.requires_grad:
            native_delta.lora_up(out, h, self.lo, self.rank, self.slots, self.b)
            return out
        delta = torch.zeros(out.shape, dtype=torch.float32)
        native_delta.lora_up(delta, h, self.lo, self.rank, self.slots, self.b)
        return out + delta.to(out.dtype)
