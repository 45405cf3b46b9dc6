"""The gathered LoRA linear: a base linear layer plus stacks of adapter weights in numbered slots.

Every linear layer any LoRA may target is wrapped once, at start-up, and owns two preallocated
stacks, each slot laid out as PEFT saves the weights (``lora_A.weight [r, in]``, ``lora_B.weight
[out, r]``), so that loading an adapter is a straight copy of the file's rows, not a transpose:

    A: [slots, max_rank, in_features]     B: [slots, out_features, max_rank]

(A is a view of its input group's ``a_store``, where siblings' A stacks sit one above the other).
The products read them through transposed views (``x @ A^T``, ``h @ B^T``), which BLAS takes as
they are. Loading an adapter writes into one slot, with the LoRA scale folded into B; nothing is
re-wrapped. The forward adds the update the row plan asks for (``kernels``).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..packed_linear import PackedLinear
from ..shared_input import SHARED_INPUT
from .kernels import InputGroup
from .row_plan import RowPlans

__all__ = ["GatheredLoraLinear", "NUMPY_FLOATS", "wrap_linear_layers"]

NUMPY_FLOATS = (torch.float32, torch.float16, torch.float64)  # the float dtypes numpy has too


class GatheredLoraLinear(nn.Module):
    """A base linear layer (plain, bitsandbytes nf4 / int8, or a CPU ``PackedLinear``) plus slot stacks
    of LoRA weights for it: the update is added on top of whatever the base layer computes."""

    def __init__(self, base_layer: nn.Module, name: str, plans: RowPlans, slots: int, rank: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.name = name
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        self._plans = plans
        # Buffers, not parameters (they never train), kept out of state_dict().
        self.register_buffer("lora_A", torch.zeros(slots, rank, self.in_features, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("lora_B", torch.zeros(slots, self.out_features, rank, dtype=dtype, device=device),
                             persistent=False)
        self.ranks = [0] * slots  # rank each slot holds for this layer (0: nothing)
        self.a_row = 0  # where lora_A's rows start in the group's a_store
        self.group = InputGroup([self], self.lora_A)  # replaced when siblings read the same input
        self._slot_views: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._slot_arrays: list[tuple[np.ndarray, np.ndarray]] = []

    def slot(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [max_rank, in], B [out, max_rank])`` of one slot: views, made once (loads write
        hundreds of layers, and indexing the stacks anew for each costs more than the copy)."""
        if not self._slot_views:
            self._slot_views = list(zip(self.lora_A.unbind(0), self.lora_B.unbind(0)))
        return self._slot_views[slot]

    def slot_arrays(self, slot: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``slot(slot)`` as numpy views on the CPU (None elsewhere, or for a dtype numpy lacks): a
        load slices and copies hundreds of matrices, and numpy does each for a fraction of
        torch's dispatch."""
        if self.lora_A.device.type != "cpu" or self.lora_A.dtype not in NUMPY_FLOATS:
            return None
        if not self._slot_arrays:
            self._slot_arrays = [(a.numpy(), b.numpy()) for a, b in map(self.slot, range(len(self.ranks)))]
        return self._slot_arrays[slot]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, slots={len(self.ranks)}, max_rank={self.lora_A.shape[1]}"

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        plan = self._plans.current
        if plan is None:
            return out
        if plan.stale is not None:
            raise RuntimeError(plan.stale)
        if x.shape[0] != len(plan.rows):
            raise ValueError(f"batch has {x.shape[0]} rows but set_rows() described {len(plan.rows)}")
        try:
            update = plan.updates[self]
        except KeyError:
            self.group.prepare(plan)
            update = plan.updates[self]
        if update is None:
            return out
        return update(x, out)


def wrap_linear_layers(model: nn.Module, targets: Iterable[str] | None, plans: RowPlans, *, slots: int,
                       rank: int, dtype: torch.dtype, device: torch.device) -> dict[str, GatheredLoraLinear]:
    """Replace, in place, every linear layer named by ``targets`` (PEFT-style name suffixes; ``None``:
    every linear layer but the output head) with a ``GatheredLoraLinear``; return them by name."""
    wanted = None if targets is None else list(targets)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, PackedLinear)):
            continue
        if wanted is None:
            if module is not head:
                chosen.append((name, module))
        elif any(name == t or name.endswith("." + t) for t in wanted):
            chosen.append((name, module))
    wrapped: dict[str, GatheredLoraLinear] = {}
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = GatheredLoraLinear(module, name, plans, slots, rank, dtype, device)
        setattr(parent, child, layer)
        wrapped[name] = layer
    _group_siblings(wrapped)
    return wrapped


def _group_siblings(wrapped: dict[str, GatheredLoraLinear]) -> None:
    """Give layers that read one input (q/k/v, gate/up of one block) a shared ``InputGroup``, their
    A stacks becoming row blocks of one ``a_store``."""
    for names in SHARED_INPUT:
        parents = {n.rpartition(".")[0] for n in wrapped if n.rpartition(".")[2] in names}
        for parent_name in parents:
            members = [wrapped[f"{parent_name}.{c}" if parent_name else c] for c in names
                       if (f"{parent_name}.{c}" if parent_name else c) in wrapped]
            if len(members) > 1 and len({m.in_features for m in members}) == 1:
                first = members[0].lora_A
                slots, rank, in_features = first.shape
                store = first.new_zeros(slots, rank * len(members), in_features)
                group = InputGroup(members, store)
                for j, m in enumerate(members):
                    m.lora_A = store[:, j * rank : (j + 1) * rank]
                    m.a_row = j * rank
                    m.group = group
