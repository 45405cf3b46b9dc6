"""How a batch's LoRA update is computed: per row, or the batch's adapters side by side.

From the row plan, once per batch membership (not per step), each layer builds its update in one of
two forms:

  * per row: each row's A and B gathered into ``[rows, in, r]`` / ``[rows, r, out]``; the update is
    two batched matmuls. Minimal flops; used for prompts and for CPU decode steps with many
    distinct adapters;
  * side by side: the batch's distinct adapters as one wide ``A [k*r, in]`` and ``B [out, k*r]``,
    with a 0/1 mask keeping each row's own block: ``(x @ A^T * mask) @ B^T``. Reads each adapter
    once and launches two kernels whatever k is; used for one adapter, GPU decode steps, and CPU
    decode steps with few distinct adapters.

Layers that read the same input (q/k/v, gate/up) share one A product, and the B product is added
into the base output in place (``baddbmm_`` / ``addmm_``), so the number of extra kernels per
decoder layer does not grow with the number of adapters. Zero padding adds exact zeros, so a row's
result is its adapter's ``scale * B @ A @ x`` up to float rounding, whatever else is in the batch.
Layers that no adapter of the batch targets are skipped, and each works at the largest rank its
adapters use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .layer import GatheredLoraLinear
    from .row_plan import RowPlan

__all__ = ["InputGroup", "LayerUpdate", "SHARED_INPUT"]

# Sibling layers that transformers' decoder blocks call with one and the same input tensor.
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class InputGroup:
    """Wrapped layers that read the same input (q/k/v, gate/up): their A products run as one.

    The first member called with an input computes the low-rank activations of every member; the
    others, called with that same tensor object, take their slice. Anything else (another input,
    a member called twice) recomputes, so sharing is an optimisation, never an assumption.
    """

    def __init__(self, members: list[GatheredLoraLinear]) -> None:
        self.members = members

    def prepare(self, plan: RowPlan, decode: bool) -> None:
        """Build every member's update for ``plan`` (once per plan and phase)."""
        active = {m: tuple(s for s in plan.distinct if m.ranks[s] > 0) for m in self.members}
        users = [m for m in self.members if active[m]]
        for m in self.members:
            if not active[m]:
                plan.updates[(m, decode)] = None  # no adapter of the batch targets it
        if not users:
            return
        first = users[0].lora_A
        distinct = {s for m in users for s in active[m]}
        # Side by side (the batch's distinct adapters as one wide A and B) costs k times the flops
        # of per-row products but reads each adapter once and needs no per-row copies: right for
        # one adapter, for a GPU decode step (launch-bound) and for a CPU decode step with few
        # distinct adapters; per-row products otherwise.
        rows = len(plan.rows)
        per_row = not (len(distinct) == 1 or (decode and (first.device.type == "cuda" or 4 * len(distinct) <= rows)))
        downs, ups, masks, width = [], [], [], 0
        for m in users:
            rank = max(m.ranks[s] for s in active[m])
            if per_row:
                downs.append(m.lora_A.index_select(0, plan.idx)[:, :rank].transpose(1, 2))  # [rows, in, r]
                b = m.lora_B.index_select(0, plan.idx)[:, :, :rank].transpose(1, 2).contiguous()  # [rows, r, out]
                cols = rank
            else:
                sel = torch.tensor(active[m], device=first.device)
                k = len(active[m])
                downs.append(m.lora_A.index_select(0, sel)[:, :rank].reshape(k * rank, m.in_features))
                b = m.lora_B.index_select(0, sel)[:, :, :rank].permute(1, 0, 2).reshape(m.out_features, k * rank).t()
                owner = torch.tensor(plan.rows, device=first.device).unsqueeze(1) == sel.unsqueeze(0)  # [rows, k]
                masks.append(owner.repeat_interleave(rank, dim=1))
                cols = k * rank
            ups.append((m, width, width + cols, b))
            width += cols
        if per_row:
            down = _Down(torch.cat(downs, dim=2).contiguous(), None, True, users)
        else:
            mask = torch.cat(masks, dim=1)
            down = _Down(torch.cat(downs, dim=0), None if bool(mask.all()) else mask.to(first.dtype), False, users)
        for m, lo, hi, b in ups:
            plan.updates[(m, decode)] = LayerUpdate(down, m, lo, hi, b, per_row)


class _Down:
    """``x`` -> low-rank activations of every member of an input group, computed once per input."""

    __slots__ = ("a", "mask", "mask3", "per_row", "members", "x", "h", "pending")

    def __init__(self, a: torch.Tensor, mask: torch.Tensor | None, per_row: bool,
                 members: list[GatheredLoraLinear]) -> None:
        self.a, self.mask, self.per_row, self.members = a, mask, per_row, members
        self.mask3 = None if mask is None else mask.unsqueeze(1)
        self.x: torch.Tensor | None = None
        self.h: torch.Tensor | None = None
        self.pending: set[GatheredLoraLinear] = set()

    def __call__(self, x: torch.Tensor, member: GatheredLoraLinear) -> torch.Tensor:
        if self.x is x and member in self.pending:
            self.pending.discard(member)
            h = self.h
            if not self.pending:
                self.x = self.h = None
            return h
        xs = x if x.dtype == self.a.dtype else x.to(self.a.dtype)
        if self.per_row:
            h = torch.bmm(xs.reshape(xs.shape[0], -1, xs.shape[-1]), self.a)  # [rows, tokens, width]
        else:
            h = F.linear(xs, self.a)
            if self.mask is not None:
                h = h * (self.mask3 if x.dim() == 3 else self.mask)
        if len(self.members) > 1:
            self.x, self.h, self.pending = x, h, {m for m in self.members if m is not member}
        return h


class LayerUpdate:
    """One member's B product, added into the base output in place (one fused op where possible)."""

    __slots__ = ("down", "member", "lo", "hi", "b", "per_row")

    def __init__(self, down: _Down, member: GatheredLoraLinear, lo: int, hi: int, b: torch.Tensor,
                 per_row: bool) -> None:
        self.down, self.member, self.lo, self.hi, self.b, self.per_row = down, member, lo, hi, b, per_row

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self.down(x, self.member)[..., self.lo : self.hi]
        fused = out.dtype == self.b.dtype and out.is_contiguous() and not out.requires_grad
        if self.per_row:
            if fused:
                out.view(out.shape[0], -1, out.shape[-1]).baddbmm_(h, self.b)
                return out
            delta = torch.bmm(h, self.b).reshape(out.shape)
        else:
            h2 = h.reshape(-1, h.shape[-1])
            if fused:
                out.view(-1, out.shape[-1]).addmm_(h2, self.b)
                return out
            delta = (h2 @ self.b).reshape(out.shape)
        return out + delta.to(out.dtype)

