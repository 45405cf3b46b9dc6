"""CPU bf16 linear layers: weights in bfloat16, products on the CPU's bf16 dot products, fp32 out.

Measured on SmolLM2-135M-Instruct (real weights; BENCHMARKS.md, "CPU quantization on a real
model"): storing the linear weights in bfloat16 and rounding each layer's input to bfloat16, with
products accumulated in float32, leaves perplexity unchanged (−0.02%) and 13 of 16 greedy chat
answers identical to fp32 over 48 tokens, where fbgemm's int8 (per-row 7-bit activations,
per-channel weights) moved perplexity by +15% and left 1 of 16 answers intact. The int8 error is
in the activations' outlier channels and in the per-channel weight scale; bfloat16 keeps a relative
precision per value, so outliers cost nothing.

It is also fast: half of fp32's weight bytes, and AVX512-BF16's ``vdpbf16ps`` does 32 multiply-adds
per instruction. torch's own bf16 matmul (oneDNN) is as fast with prepacked weights, but its output
is bfloat16 and it is not batch-invariant on every shape (one row alone takes another path than
the same row among others at K=2048), so the product is a kernel of ours (``native/bf16_linear.c``,
built by ``native_kernels``) whose every output is accumulated in one fixed order whatever the
batch: a row's result never depends on its batch mates, and a row holding NaN or inf spoils only
itself. Without AVX512-BF16 the same kernel computes the same products with fused multiply-adds, in
AVX2 registers six rows at a time where the CPU has them (on a 2-core AMD EPYC, a 720-row prompt
through a 576x3072 layer on one core: 40 ms, against 69 ms for the plain C loop and 34 ms for fp32
in torch's BLAS), the same bits either way.

Everything else (norms, attention, the residual stream, LoRA deltas, soft prompts, the input
embeddings) stays float32.
"""

from __future__ import annotations

import ctypes

import torch

from .native_kernels import load_kernel

__all__ = ["Bf16Product", "native_bf16"]

_PANEL = 16  # outputs per packed panel
_K_ALIGN = 32  # input features are padded (with zero weights) to a multiple of this
_KEPT_ROWS = 256  # the rounded-input scratch of a step with at most this many rows is reused

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


def _kernel() -> ctypes.CDLL:
    lib = load_kernel("bf16_linear")
    lib.bf16_linear.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _I64, _PTR, _I64, _PTR, _PTR, _I64]
    lib.bf16_linear.restype = None
    lib.bf16_native.argtypes, lib.bf16_native.restype = [], ctypes.c_int
    lib.bf16_input_bytes.argtypes, lib.bf16_input_bytes.restype = [], ctypes.c_int
    return lib


def native_bf16() -> bool:
    """Whether the kernel was built with the CPU's bf16 dot-product instructions (AVX512-BF16)."""
    return bool(_kernel().bf16_native())


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class Bf16Product:
    """``x W^T + b`` for one bf16-packed weight (a ``packed_linear.Product``), which may stack several
    layers' weights (their outputs are then the column blocks ``widths``, each returned contiguous)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, widths: tuple[int, ...]) -> None:
        self._lib = _kernel()
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        self.k_padded = _round_up(self.in_features, _K_ALIGN)
        rows = _round_up(self.out_features, _PANEL)
        padded = torch.zeros(rows, self.k_padded, dtype=torch.bfloat16)
        padded[: self.out_features, : self.in_features] = weight.detach()
        # [panels, 16, K/2, 2] -> [panels, K/2, 16, 2]: for each pair of inputs, 16 outputs' pairs in a row
        self.packed = padded.view(rows // _PANEL, _PANEL, self.k_padded // 2, 2).permute(0, 2, 1, 3).contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.widths = widths
        # the rounded inputs: bfloat16 for AVX512-BF16, float32 holding bfloat16 values elsewhere
        self._scratch_dtype = torch.bfloat16 if self._lib.bf16_input_bytes() == 2 else torch.float32
        self._scratch = torch.empty(0, dtype=self._scratch_dtype)

    def nbytes(self) -> int:
        return self.packed.nbytes + (0 if self.bias is None else self.bias.nbytes)

    def _rows_scratch(self, rows: int) -> torch.Tensor:
        """Room for ``rows`` rounded input rows; a decode step's is kept, a prompt's is not."""
        if self._scratch.numel() >= rows * self.k_padded:
            return self._scratch
        scratch = torch.empty(rows * self.k_padded, dtype=self._scratch_dtype)
        if rows <= _KEPT_ROWS:
            self._scratch = scratch
        return scratch

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[-1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got {flat.shape[-1]}")
        if flat.stride(-1) != 1:
            flat = flat.contiguous()
        rows = flat.shape[0]
        out = torch.empty(rows, self.out_features, dtype=torch.float32)
        scratch = self._rows_scratch(rows)  # held here: the kernel writes into it
        self._lib.bf16_linear(flat.data_ptr(), rows, self.in_features, flat.stride(0),
                              scratch.data_ptr(), self.k_padded, self.packed.data_ptr(),
                              self.out_features, None if self.bias is None else self.bias.data_ptr(),
                              out.data_ptr(), self.out_features)
        if len(self.widths) == 1:
            return out
        return tuple(block.contiguous() for block in out.split(self.widths, dim=1))
