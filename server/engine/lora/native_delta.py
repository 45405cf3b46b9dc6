"""The LoRA update on a float32 CPU base, row by row in one fixed order (``native/lora_delta.c``).

The batched products of ``kernels`` group a batch's rows by adapter, so the same row's update is a
``bmm`` over a different number of rows (and, for rows with an adapter of their own, a fused
``baddbmm_``) depending on its batch mates; BLAS picks its blocking, and so its float32 summation
order, from those sizes. A rounding's difference is nothing in float32, but the next quantized layer
rounds its input again, to bfloat16 or to an int8 step, and a value sitting on a boundary moves by a
whole step: through ``adapterhub serve`` on SmolLM2-135M-Instruct with ``--quantize int8``, 3 LoRA
rows of 8 changed their greedy answer when batched, while base and soft-prompt rows kept theirs.
Here every value of a row's update is one dot product computed the same way whatever the batch, so
a row's answer is the one it gets alone. Used on the CPU for float32 stacks where the kernel builds;
elsewhere ``kernels``' batched products stay.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from ..native_kernels import KernelUnavailable, load_kernel

__all__ = ["available", "lora_down", "lora_up"]

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


@functools.lru_cache(maxsize=1)
def _kernel() -> ctypes.CDLL | None:
    try:
        lib = load_kernel("lora_delta")
    except KernelUnavailable:
        return None
    lib.lora_down.argtypes = [_PTR, *[_I64] * 5, _PTR, _PTR, _I64, _I64, _I64, _PTR]
    lib.lora_down.restype = None
    lib.lora_up.argtypes = [_PTR, *[_I64] * 5, _PTR, _PTR, _I64, _I64, _I64, _PTR, _I64, _I64]
    lib.lora_up.restype = None
    return lib


def available(stack: torch.Tensor) -> bool:
    """Whether the row-by-row kernel serves slot stacks like ``stack``."""
    return stack.device.type == "cpu" and stack.dtype == torch.float32 and _kernel() is not None


def _rows3(x: torch.Tensor) -> torch.Tensor:
    x3 = x if x.dim() == 3 else x.reshape(x.shape[0], -1, x.shape[-1])
    return x3 if x3.stride(-1) == 1 else x3.contiguous()


def lora_down(x: torch.Tensor, slots: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``x [rows, ..., in]``, ``a [slots, width, in]`` (a view of the stacks, last dim contiguous) ->
    ``h [rows, tokens, width]``: each row's input times its slot's A rows (base rows: zeros)."""
    x3 = _rows3(x.float())
    rows, tokens, k = x3.shape
    width = a.shape[1]
    h = torch.zeros(rows, tokens, width, dtype=torch.float32)
    _kernel().lora_down(x3.data_ptr(), rows, tokens, k, x3.stride(0), x3.stride(1), slots.data_ptr(),
                        a.data_ptr(), a.stride(0), a.stride(1), width, h.data_ptr())
    return h


def lora_up(out: torch.Tensor, h: torch.Tensor, lo: int, rank: int, slots: torch.Tensor, b: torch.Tensor) -> None:
    """``out [rows, ..., n] +=`` each adapter row's ``h[..., lo : lo + rank] @ B^T``, in place
    (``b [slots, n, max_rank]``, its rows contiguous; ``out`` contiguous float32)."""
    out3 = out.view(out.shape[0], -1, out.shape[-1])
    rows, tokens, n = out3.shape
    _kernel().lora_up(h.data_ptr(), rows, tokens, h.shape[2], lo, rank, slots.data_ptr(), b.data_ptr(),
                      b.stride(0), b.stride(1), n, out3.data_ptr(), out3.stride(0), out3.stride(1))
