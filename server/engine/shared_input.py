"""Layers a decoder block calls with one input tensor, and the value computed once for them.

q/k/v (and gate/up) read the same hidden states: the CPU int8 layers compute their product once
(``int8_linear``), the LoRA layers their A product once (``lora.kernels``). Both keep it with
``OncePerInput``: the first member called with a tensor computes the value, the others called with
that same tensor object take it. A member asking twice, or for another tensor, gets it computed
afresh: sharing is an optimisation, never an assumption about the call order.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["OncePerInput", "SHARED_INPUT"]

SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class OncePerInput:
    """``compute(x)`` shared by the members that ``join`` (members are bits: this runs hundreds of
    times a decode step)."""

    __slots__ = ("compute", "everyone", "x", "pending", "value")

    def __init__(self, compute: Callable[[torch.Tensor], Any]) -> None:
        self.compute = compute
        self.everyone = 0  # a bit per member
        self.x: torch.Tensor | None = None
        self.pending = 0  # members that have not yet taken ``value`` of ``x``
        self.value: Any = None

    def join(self) -> int:
        """A new member's index."""
        index = self.everyone.bit_length()
        self.everyone |= 1 << index
        return index

    def __call__(self, x: torch.Tensor, member: int) -> Any:
        bit = 1 << member
        if self.x is x and self.pending & bit:
            self.pending &= ~bit
            value = self.value
            if not self.pending:
                self.x = self.value = None
            return value
        value = self.compute(x)
        if self.everyone != bit:
            self.x, self.pending, self.value = x, self.everyone & ~bit, value
        return value
