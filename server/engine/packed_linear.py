"""CPU linear layers whose weights are packed for a kernel: the layer, and the swap of a model's layers.

A quantized CPU mode (``int8_linear``, ``bf16_linear``) supplies a *product*: built from one float
weight (and bias), it computes ``x W^T + b`` for rows of ``x``. ``PackedLinear`` is the module a
model then holds in place of each ``nn.Linear``. Layers that read one input (q/k/v, gate/up;
``shared_input.SHARED_INPUT``) share one product of their stacked weights, each taking its own
block of output columns: one kernel call (and one pass over the input) for all of them, bit for bit
what each computes alone, since every product computes each output column independently.

Products keep buffers between decode steps, so a model's forward must not run in two threads at
once (the engine's one thread owns the model).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from .shared_input import OncePerInput

__all__ = ["Product", "ProductFactory", "PackedLinear", "pack_linear_layers", "packed_bytes"]


class Product(Protocol):
    """``x W^T + b`` of one packed weight; several layers' stacked weights give a tuple of blocks."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]: ...

    def nbytes(self) -> int: ...


# (weight [out, in], bias [out] or None, widths of the output blocks) -> product
ProductFactory = Callable[[torch.Tensor, "torch.Tensor | None", "tuple[int, ...]"], Product]


class PackedLinear(nn.Module):
    """``y = x W^T + b`` through a packed product (see the module doc).

    Args:
        in_features, out_features: the layer's shape.
        bias: kept on the layer (read by LoRA and PEFT wrappers); the product adds its own copy.
        product: the layer's own product, or ``None`` for a member of a shared one.
        shared: ``(group, index)``: this layer is member ``index`` of a fused product.
        mode: the quantization's name (``int8``, ``bf16``), for ``repr`` and checks.
    """

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, *, mode: str,
                 product: Product | None = None, shared: tuple[OncePerInput, int] | None = None) -> None:
        super().__init__()
        if (product is None) == (shared is None):
            raise ValueError("a PackedLinear holds either its own product or a place in a shared one")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone(), persistent=False)
        self.group, self._member = shared if shared is not None else (None, 0)
        self._product = product

    @classmethod
    def single(cls, linear: nn.Linear, make: ProductFactory, mode: str) -> PackedLinear:
        """One layer with a product of its own."""
        _check_cpu(linear)
        return cls(linear.in_features, linear.out_features, linear.bias, mode=mode,
                   product=make(linear.weight, linear.bias, (linear.out_features,)))

    @classmethod
    def fused(cls, linears: list[nn.Linear], make: ProductFactory, mode: str) -> list[PackedLinear]:
        """Layers for ``linears`` (one input width), computed as one product of their stacked weights."""
        if len({m.in_features for m in linears}) != 1:
            raise ValueError("fused layers must read inputs of one width")
        for m in linears:
            _check_cpu(m)
        has_bias = any(m.bias is not None for m in linears)
        bias = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])
        product = make(torch.cat([m.weight for m in linears]), bias if has_bias else None,
                       tuple(int(m.out_features) for m in linears))
        group = OncePerInput(product)
        return [cls(m.in_features, m.out_features, m.bias, mode=mode, shared=(group, group.join())) for m in linears]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, mode={self.mode}")

    def nbytes(self) -> int:
        """Bytes of the packed weight (a fused product's are counted on its first member)."""
        if self._product is not None:
            return self._product.nbytes()
        return self.group.compute.nbytes() if self._member == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"{self.mode} layers compute in float32, got {x.dtype}")
        if self.group is not None:
            out = self.group(x, self._member)[self._member]
        else:
            out = self._product(x)
        return out.view(*x.shape[:-1], self.out_features)


def _check_cpu(linear: nn.Linear) -> None:
    if linear.weight.device.type != "cpu":
        raise ValueError("packed linear layers run on the CPU")


def pack_linear_layers(model: nn.Module, make: ProductFactory, mode: str, *,
                       skip: Callable[[str], bool] = lambda name: False,
                       shared_inputs: tuple[tuple[str, ...], ...] = ()) -> dict[str, PackedLinear]:
    """Replace, in place, every ``nn.Linear`` of ``model`` (the output head included) by a
    ``PackedLinear`` over ``make``'s products, except those whose name ``skip`` accepts; return the
    new layers by name. Siblings named together in ``shared_inputs`` under one parent, reading
    inputs of one width, share one product."""
    chosen = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and not skip(name)]
    groups: dict[tuple[str, int], list[tuple[str, nn.Linear]]] = {}
    done: dict[str, PackedLinear] = {}
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        group = next((i for i, names in enumerate(shared_inputs) if child in names), None)
        if group is None:
            done[name] = PackedLinear.single(module, make, mode)
        else:
            groups.setdefault((parent_name, group), []).append((name, module))
    for members in groups.values():
        if len(members) > 1 and len({m.in_features for _, m in members}) == 1:
            done.update(zip([n for n, _ in members], PackedLinear.fused([m for _, m in members], make, mode)))
        else:
            done.update((n, PackedLinear.single(m, make, mode)) for n, m in members)
    for name, layer in done.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return done


def packed_bytes(model: nn.Module) -> int:
    """Bytes held by the model's packed weights (not in its parameters)."""
    return sum(m.nbytes() for m in model.modules() if isinstance(m, PackedLinear))
