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
channel, symmetric. Activations get 8 bits (127 steps each side of zero) where the CPU has VNNI
(``vpdpbusd`` sums in 32 bits); elsewhere ``reduce_range`` keeps them to 7 bits (63 steps), so AVX2's
``vpmaddubsw`` (which saturates 16-bit pair sums) can never saturate. On real weights the 7-bit
activations cost 4x the perplexity of the 8-bit ones (BENCHMARKS.md); both are lossy, which is why
``bf16`` is the CPU default.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["Int8Product", "activation_bits"]

_TINY = torch.finfo(torch.float32).tiny
_KEPT_ROWS = 256  # the scaled-input buffer of a step with at most this many rows is reused


@functools.lru_cache(maxsize=1)
def activation_bits() -> int:
    """8 where fbgemm's int8 products accumulate in 32 bits (AVX512-VNNI or AVX-VNNI), else 7."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return 8 if {"avx512_vnni", "avx_vnni"} & set(flags) else 7


def _low_end(bits: int) -> float:
    """The constant appended as ``-LOW``: with codes 0..2^bits-1, fbgemm's scale is then
    ``1 / (2^(bits-1) - 1)`` and its zero point exactly ``2^(bits-1)``: as many steps each side of zero."""
    half = 1 << (bits - 1)
    return half / (half - 1)


class _RowScale:
    """Scales a layer's input row by row (see the module doc), into a buffer kept between steps."""

    __slots__ = ("_buffer", "_low")

    def __init__(self, low: float) -> None:
        self._buffer = torch.empty(0)
        self._low = low

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([rows, in + 2] with every row spanning [-LOW, 1], [rows, 1] scales)`` for ``x [..., in]``."""
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
        buf[:, width] = -self._low
        buf[:, width + 1] = 1.0
        if rows <= _KEPT_ROWS:
            self._buffer = buf
        return buf


class Int8Product:
    """``x W^T + b`` for one int8 weight (a ``packed_linear.Product``), which may stack several
    layers' weights (their outputs are then the column blocks ``widths``, each returned contiguous)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, widths: tuple[int, ...]) -> None:
        out_features = int(weight.shape[0])
        self.in_features = int(weight.shape[1])
        w = weight.detach().float()
        w_scale = (w.abs().amax(1) / 127).clamp_min(_TINY)
        padded = torch.cat([w, w.new_zeros(out_features, 2)], 1)
        qweight = torch.quantize_per_channel(padded, w_scale.double(), torch.zeros(out_features, dtype=torch.long),
                                             0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if bias is None else bias.detach().float().clone()
        self.widths = widths
        self.reduce_range = activation_bits() == 7
        self.row_scale = _RowScale(_low_end(activation_bits()))

    def nbytes(self) -> int:
        """Bytes of the packed int8 weight (two zero columns included) and its per-channel scales."""
        return sum(self.widths) * (self.in_features + 2 + 8)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        scaled, scale = self.row_scale(x)
        out = torch.ops.quantized.linear_dynamic(scaled, self.packed, self.reduce_range).mul_(scale)
        if self.bias is not None:
            out.add_(self.bias)
        if len(self.widths) == 1:
            return out
        return tuple(block.contiguous() for block in out.split(self.widths, dim=1))
