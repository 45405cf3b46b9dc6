"""The CPU attention kernel (``adapterhub_cpu``): SDPA's values, and a query's result a function of
its own query and the keys it may see only: not of padding, window width, batch mates, or of
whether its keys came from one prefill or many decode steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from adapterhub.server.engine.attention import _attention_forward, use_batch_invariant_attention
from adapterhub.server.engine.model_loader import load_base_model


class _Module(torch.nn.Module):
    num_key_value_groups = 3


def _sdpa(q, k, v, mask):
    group = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                         attn_mask=mask)
    return out.transpose(1, 2)


def _inputs(batch=3, heads=9, kv_heads=3, q_len=7, kv_len=19, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=g)
    k = torch.randn(batch, kv_heads, kv_len, dim, generator=g)
    v = torch.randn(batch, kv_heads, kv_len, dim, generator=g)
    starts = torch.tensor([0, 5, 11][:batch])  # left padding per row
    cols = torch.arange(kv_len)
    rows = torch.arange(q_len)[:, None] + kv_len - q_len
    mask = (cols[None, None, :] >= starts[:, None, None]) & (cols[None, None, :] <= rows[None])
    return q, k, v, mask[:, None]


@pytest.mark.parametrize("dim", [64, 40, 17])
def test_values_are_sdpas(dim):
    q, k, v, mask = _inputs(dim=dim)
    ours, _ = _attention_forward(_Module(), q, k, v, mask, scaling=dim ** -0.5)
    torch.testing.assert_close(ours, _sdpa(q, k, v, mask), atol=2e-6, rtol=1e-5)


def test_a_query_ignores_padding_window_width_and_batch_mates():
    q, k, v, mask = _inputs()
    ours, _ = _attention_forward(_Module(), q, k, v, mask)
    start = 11
    # row 2 alone, without its padding columns: the very same bits
    alone, _ = _attention_forward(_Module(), q[2:3], k[2:3, :, start:], v[2:3, :, start:], mask[2:3, :, :, start:])
    assert torch.equal(alone[0], ours[2])
    # the same row in a wider window (more padding on its left), next to other rows
    pad = 23
    k_wide = torch.cat([torch.randn(3, 3, pad, 64), k], 2)
    v_wide = torch.cat([torch.randn(3, 3, pad, 64), v], 2)
    mask_wide = torch.cat([torch.zeros(3, 1, 7, pad, dtype=torch.bool), mask], 3)
    wide, _ = _attention_forward(_Module(), q, k_wide, v_wide, mask_wide)
    assert torch.equal(wide, ours)
    # one query at a time (decode steps) gives each query's bits from the many-query call (a prefill)
    for i in range(7):
        one, _ = _attention_forward(_Module(), q[:, :, i : i + 1], k[:, :, : 19 - 6 + i], v[:, :, : 19 - 6 + i],
                                    mask[:, :, i : i + 1, : 19 - 6 + i])
        assert torch.equal(one[:, 0], ours[:, i])


def test_a_non_finite_query_fails_alone_and_a_query_with_no_key_gets_zeros():
    q, k, v, mask = _inputs()
    q[1, 4, 3, 0] = float("nan")
    mask[0, :, 2] = False
    ours, _ = _attention_forward(_Module(), q, k, v, mask)
    assert torch.isnan(ours[1, 3, 4]).all()
    assert torch.isfinite(ours[1, :, :4]).all() and torch.isfinite(ours[2]).all()
    assert torch.equal(ours[0, 2], torch.zeros(9, 64))


@pytest.mark.parametrize("mode", ["none", "bf16", "int8"])
def test_cpu_bases_use_it_and_a_padded_row_gets_its_alone_logits(tiny_base, mode):
    loaded = load_base_model(str(tiny_base), quantize=mode)
    assert loaded.model.config._attn_implementation == "adapterhub_cpu"
    ids = torch.randint(3, 256, (3, 30), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :9], mask[2, :21] = 0, 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        batched = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        for row, start in ((1, 9), (2, 21)):
            alone = loaded.model(input_ids=ids[row : row + 1, start:]).logits[0]
            if mode == "none":  # fp32 matmuls may block differently by batch size: values, not bits
                torch.testing.assert_close(alone, batched[row, start:], atol=1e-5, rtol=0)
            else:
                assert torch.equal(alone, batched[row, start:])


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_one_prefill_and_a_prefill_then_decode_steps_give_the_same_bits(tiny_base, mode):
    """What lets a cached prefix stand in for its prefill: the packed layers and this attention
    compute each position on its own."""
    model = load_base_model(str(tiny_base), quantize=mode).model
    x = torch.randint(3, 256, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = model(input_ids=x).logits[0]
        cache = DynamicCache()
        parts = [model(input_ids=x[:, :9], past_key_values=cache, use_cache=True).logits[0]]
        for t in range(9, 24):
            parts.append(model(input_ids=x[:, t : t + 1], past_key_values=cache, use_cache=True).logits[0])
    assert torch.equal(whole, torch.cat(parts))


def test_gpu_or_unsupported_models_keep_their_attention(tiny_base):
    model = load_base_model(str(tiny_base), quantize="none").model
    assert use_batch_invariant_attention(model)  # registering again is harmless
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
