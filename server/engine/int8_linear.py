"""CPU int8 linear layers on fbgemm whose result for a row never depends on the other rows.

fbgemm's dynamic int8 linear (what ``torch.ao.quantization.quantize_dynamic`` runs) reads a quarter
of fp32's weight bytes, and a CPU decode step is bound by memory bandwidth, so it is several times
faster than fp32 where the int8 kernels of ``torch._int_mm`` / ``torch._weight_int8pack_mm`` (and
torchao, built on them) are slower than fp32 on AVX2/AVX-512 CPUs. But it picks one activation scale
per *tensor*: a row's result would change with whatever else is in the batch, and a served request
must get the same tokens whatever it is batched with.

So each row (each token of a prompt) is scaled to max |x| = 1 and two constant input features are
appended whose weight columns are zero: ``-LOW`` and ``+1``. Every row then spans the same range,
so the quantization parameters fbgemm derives from the whole tensor are the same for every batch
(a symmetric per-row quantization in effect, zero point an exact integer), the zero columns add
nothing, and the output row is multiplied back by the row's scale. Weights are int8 per output
channel, symmetric. ``reduce_range`` keeps activations to 7 bits, so AVX2's ``vpmaddubsw`` (which
saturates 16-bit pair sums) can never saturate.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .shared_input import OncePerInput

__all__ = ["Int8Linear", "quantize_linear_layers", "int8_bytes"]

# With reduce_range the activation codes are 0..127; appending -_LOW and +1 makes fbgemm's scale
# (max - min) / 127 == 1/63 and its zero point exactly 64: 63 steps each side of zero.
_LOW = 64 / 63
_TINY = torch.finfo(torch.float32).tiny
_KEPT_ROWS = 256  # the scaled-input buffer of a step with at most this many rows is reused


class _RowScale:
    """Scales a layer's input row by row (see the module doc), into a buffer kept between steps."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = torch.empty(0)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([rows, in + 2] with every row spanning [-_LOW, 1], [rows, 1] scales)`` for ``x [..., in]``."""
        flat = x.reshape(-1, x.shape[-1])
        scaled = self._rows_buffer(flat.shape[0], flat.shape[1], x.device)
        scale = flat.abs().amax(1, keepdim=True).clamp_min_(_TINY)  # a quarter of vector_norm(inf)'s time
        torch.div(flat, scale, out=scaled[:, : flat.shape[1]])
        # A row holding NaN or inf (an adapter gone wrong upstream) has a NaN or inf scale, and so
        # does the largest scale: two ops, where ``isfinite(scale).any()`` and its sync dispatch about
        # thirteen (1,573 of a decode step's 9,333 ops at 121 int8 products).
        if scale.numel() and not math.isfinite(scale.max().item()):
            broken = ~torch.isfinite(scale)
            # fbgemm derives one set of quantization parameters from the whole tensor: one NaN row
            # would make every row NaN. Quantize zeros there and give the row a NaN scale, so that
            # row alone comes out NaN (and fails alone in the engine) while the others are untouched.
            scaled[broken.squeeze(1), : flat.shape[1]] = 0
            scale = scale.masked_fill(broken, float("nan"))
        return scaled, scale

    def _rows_buffer(self, rows: int, width: int, device: torch.device) -> torch.Tensor:
        """A ``[rows, width + 2]`` buffer ending in the two constant columns; a decode step's small
        one is kept between calls, a prompt's is not (it would stay allocated in every layer)."""
        if self._buffer.shape == (rows, width + 2):
            return self._buffer
        buf = torch.empty(rows, width + 2, dtype=torch.float32, device=device)
        buf[:, width] = -_LOW
        buf[:, width + 1] = 1.0
        if rows <= _KEPT_ROWS:
            self._buffer = buf
        return buf


class _Int8Product:
    """``x W^T + b`` for one int8 weight, which may stack several layers' weights (their outputs are
    then the column blocks ``widths`` of the product, each returned contiguous)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, widths: tuple[int, ...]) -> None:
        out_features = int(weight.shape[0])
        w = weight.detach().float()
        w_scale = (w.abs().amax(1) / 127).clamp_min(_TINY)
        padded = torch.cat([w, w.new_zeros(out_features, 2)], 1)
        qweight = torch.quantize_per_channel(padded, w_scale.double(), torch.zeros(out_features, dtype=torch.long),
                                             0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if bias is None else bias.detach().float().clone()
        self.widths = widths
        self.row_scale = _RowScale()

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        scaled, scale = self.row_scale(x)
        out = torch.ops.quantized.linear_dynamic(scaled, self.packed, True).mul_(scale)
        if self.bias is not None:
            out.add_(self.bias)
        if len(self.widths) == 1:
            return out
        return tuple(block.contiguous() for block in out.split(self.widths, dim=1))


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with W int8 per output channel and x quantized per row (see the module doc).

    Layers that read one input (q/k/v, gate/up; ``fused``) share one int8 product of their stacked
    weights: one activation quantization and one fbgemm call for all of them, each taking its own
    output columns, bit for bit what it computes alone (integer accumulation, per-channel scales).
    The scaled input is written to a buffer kept between decode steps, so a model's forward must
    not run in two threads at once (the engine's one thread owns the model).

    Args:
        weight: ``[out, in]`` float weight to quantize.
        bias: optional ``[out]`` bias, kept in fp32.
        shared: ``(group, index)``: this layer is member ``index`` of a fused product (``fused``
            makes them), which holds the quantized weight; none of its own is kept.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 shared: tuple[OncePerInput, int] | None = None) -> None:
        super().__init__()
        if weight.device.type != "cpu":
            raise ValueError("Int8Linear runs on the CPU (fbgemm)")
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone(), persistent=False)
        self.group, self._member = shared if shared is not None else (None, 0)
        self._product = _Int8Product(weight, bias, (self.out_features,)) if shared is None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    @classmethod
    def fused(cls, linears: list[nn.Linear]) -> list[Int8Linear]:
        """Int8 layers for ``linears`` (one input width), computed as one product (see the class doc)."""
        if len({m.in_features for m in linears}) != 1:
            raise ValueError("fused layers must read inputs of one width")
        biases = [m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears]
        has_bias = any(m.bias is not None for m in linears)
        product = _Int8Product(torch.cat([m.weight for m in linears]), torch.cat(biases) if has_bias else None,
                               tuple(int(m.out_features) for m in linears))
        group = OncePerInput(product)
        return [cls(m.weight, m.bias, shared=(group, group.join())) for m in linears]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def nbytes(self) -> int:
        """Bytes of the packed int8 weight and its scales (its share of a fused product's)."""
        return self.out_features * (self.in_features + 2 + 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"Int8Linear computes in float32, got {x.dtype}")
        if self.group is not None:
            out = self.group(x, self._member)[self._member]
        else:
            out = self._product(x)
        return out.view(*x.shape[:-1], self.out_features)


def quantize_linear_layers(model: nn.Module, *, skip: Callable[[str], bool] = lambda name: False,
                           shared_inputs: tuple[tuple[str, ...], ...] = ()) -> dict[str, Int8Linear]:
    """Replace, in place, every ``nn.Linear`` of ``model`` (the output head included) by an
    ``Int8Linear``, except those whose name ``skip`` accepts; return the new layers by name.

    Siblings named together in ``shared_inputs`` (e.g. ``("q_proj", "k_proj", "v_proj")``) under
    one parent, reading inputs of one width, share one fused product (``Int8Linear.fused``).
    """
    chosen = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and not skip(name)]
    groups: dict[tuple[str, int], list[tuple[str, nn.Linear]]] = {}
    done: dict[str, Int8Linear] = {}
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        group = next((i for i, names in enumerate(shared_inputs) if child in names), None)
        if group is None:
            done[name] = Int8Linear.from_linear(module)
        else:
            groups.setdefault((parent_name, group), []).append((name, module))
    for members in groups.values():
        if len(members) > 1 and len({m.in_features for _, m in members}) == 1:
            done.update(zip([n for n, _ in members], Int8Linear.fused([m for _, m in members])))
        else:
            done.update((n, Int8Linear.from_linear(m)) for n, m in members)
    for name, layer in done.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return done


def int8_bytes(model: nn.Module) -> int:
    """Bytes held by the model's ``Int8Linear`` weights (packed, so not in its parameters)."""
    return sum(m.nbytes() for m in model.modules() if isinstance(m, Int8Linear))
