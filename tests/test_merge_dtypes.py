"""The merge's torch-free dtype conversions against torch's own, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapterhub.errors import MergeError
from adapterhub.merge.dtypes import from_float32, numpy_dtype, to_float32


def _awkward_float32() -> torch.Tensor:
    """Random values plus every case rounding treats specially: ties, carries into the exponent,
    overflow to inf, subnormals, signed zeros, infinities and NaNs."""
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), -float("nan"), 1e-40, -1e-45,
                            3.3895314e38, -3.3895314e38, 65504.0, 65520.0, 6e-8, 1.0, 1.00390625, 1.01171875])
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0x007FFFFF, 0x7F7F8000], dtype=torch.int64)
    ties = bits.to(torch.int32).view(torch.float32)
    noise = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * torch.logspace(-30, 30, 10_000)
    return torch.cat([special, ties, noise])


@pytest.mark.parametrize("code, dtype", [("BF16", torch.bfloat16), ("F16", torch.float16), ("F64", torch.float64)])
def test_narrowing_and_widening_match_torch_bit_for_bit(code, dtype):
    """Every number converts to the same bits as torch's; a NaN stays a NaN (its payload is not
    specified: torch's CPU kernels write 0xFFFF for bfloat16, ours the canonical quiet 0x7FC0)."""
    values = _awkward_float32()
    nan = values.isnan().numpy()
    ours = from_float32(values.numpy(), code)
    theirs = values.to(dtype)
    raw_theirs = theirs.view(torch.int16).numpy().view(np.uint16) if code == "BF16" else theirs.numpy()
    assert ours.dtype == numpy_dtype(code)
    assert ours[~nan].tobytes() == raw_theirs[~nan].tobytes()
    back = to_float32(ours, code)
    assert back.dtype == np.float32
    assert back[~nan].tobytes() == theirs.to(torch.float32).numpy()[~nan].tobytes()
    assert np.isnan(back[nan]).all()


def test_float32_passes_through_without_a_copy():
    values = np.arange(6, dtype=np.float32)
    assert to_float32(values, "F32") is values and from_float32(values, "F32") is values


def test_integer_tensors_are_refused_for_editing():
    with pytest.raises(MergeError, match="I64"):
        to_float32(np.arange(3, dtype=np.int64), "I64")
    with pytest.raises(MergeError, match="F8_E4M3"):
        numpy_dtype("F8_E4M3")
