"""Attention on the CPU whose result for a row never depends on its batch: the ``adapterhub_cpu``
attention implementation of transformers' models.

Rows of different lengths share one key/value window with left padding (``kv_cache``). torch's
SDPA kernels reduce over the window in blocks and SIMD lanes laid out from its first column, so
the same row's scores and values are summed in another grouping when the window is wider (a longer
row joined) or its padding shifted: a difference of a float32 rounding, which the next layer's
bf16 or int8 rounding of its input can turn into a whole step, and a greedy token into another
(measured through ``adapterhub serve``: 1 row of 8 changed its answer from token 23, with bf16).
``native/attention.c`` computes every query on its own, over only the keys its mask allows, in
key order: the padding, the window's width and the batch mates cost nothing and change nothing,
and a row's attention is the same whether its keys came from one prefill or from several steps.

Registered with transformers' ``AttentionInterface`` (and a mask function that always gives the
boolean mask, never "causal, skip it"), and chosen for CPU bases by ``model_loader``; GPU bases
keep SDPA. A model whose layers do not dispatch through that interface keeps its own attention.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from .native_kernels import KernelUnavailable, load_kernel

__all__ = ["ATTENTION_NAME", "register", "use_batch_invariant_attention"]

ATTENTION_NAME = "adapterhub_cpu"

_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


@functools.lru_cache(maxsize=1)
def _kernel() -> ctypes.CDLL:
    lib = load_kernel("attention")
    lib.attention.argtypes = [_PTR, *[_I64] * 7, _PTR, _PTR, *[_I64] * 8, _PTR, _I64, _I64, _I64, _F32, _PTR]
    lib.attention.restype = ctypes.c_int
    return lib


def _attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query [B, H, Lq, D]``, ``key``/``value``
    ``[B, KVH, Lk, D]``, a boolean ``attention_mask [B, 1, Lq, Lk]``; ``[B, Lq, H, D]`` back."""
    if query.dtype != torch.float32 or query.device.type != "cpu" or dropout or kwargs.get("softcap") is not None:
        raise ValueError("adapterhub_cpu attention computes float32 on the CPU, without dropout or softcap")
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    mask = attention_mask
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError("adapterhub_cpu attention takes a boolean mask")
        mask = mask[:, 0].expand(batch, q_len, kv_len)
    out = torch.empty(batch, q_len, heads, dim, dtype=torch.float32)
    scale = float(scaling if scaling is not None else dim ** -0.5)
    mask_args = (0, 0, 0, 0) if mask is None else (mask.data_ptr(), *mask.stride())
    failed = _kernel().attention(
        query.data_ptr(), batch, heads, q_len, dim, *query.stride()[:3],
        key.data_ptr(), value.data_ptr(), kv_heads, kv_len, *key.stride()[:3], *value.stride()[:3],
        *mask_args, scale, out.data_ptr())
    if failed:
        raise MemoryError("adapterhub_cpu attention: no memory for its scratch buffers")
    return out, None


def _boolean_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """SDPA's boolean mask, always materialised (never skipped as "causal": the kernel takes the mask)."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


@functools.lru_cache(maxsize=1)
def register() -> str:
    """Register the implementation with transformers (once); its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    _kernel()  # built (or refused) now, not in the middle of a forward pass
    AttentionInterface.register(ATTENTION_NAME, _attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, _boolean_mask)
    return ATTENTION_NAME


def use_batch_invariant_attention(model: torch.nn.Module) -> bool:
    """Switch a CPU model to ``adapterhub_cpu`` attention; False (model untouched) where its
    architecture does not take a registered attention function or no kernel can be built here."""
    try:
        name = register()
    except KernelUnavailable:
        return False
    try:
        model.set_attn_implementation(name)
    except (ValueError, AttributeError, NotImplementedError):
        return False
    return getattr(model.config, "_attn_implementation", None) == name
