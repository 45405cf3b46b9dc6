"""How several adapters' deltas for one weight become one delta: a name-to-function table.

Every method works on the dense deltas ``dW_i = scale_i * B_i @ A_i`` (already in the checkpoint's
layout), never on the A and B factors separately, so adapters of different ranks combine freely
and ``linear`` is the exact weighted sum ``sum_i w_i * dW_i``. ``cat`` folds to the same weights as
``linear``; it differs only when the result is written back as an adapter (``--as-adapter``), where
it concatenates the factors (rank = sum of ranks, lossless) instead of taking a truncated SVD.
``ties``, ``dare_linear`` and ``dare_ties`` follow ``peft.utils.merge_utils`` (the functions PEFT's
``*_svd`` combination types apply to dense deltas); DARE's random drop uses a generator seeded per
weight, so a merge is reproducible whatever order weights are processed in. The pruning methods
compute with torch (``topk``, seeded ``bernoulli``); ``linear`` is plain arithmetic on whatever
arrays it is given, so a fold that only sums never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from ..errors import MergeError

if TYPE_CHECKING:
    import torch

__all__ = ["METHODS", "MergeMethod", "get_method", "DENSITY_METHODS"]


@dataclass(frozen=True)
class MergeMethod:
    """A combination rule. ``uses_density``: it prunes, so ``--density`` applies."""

    name: str
    combine: Callable[..., "torch.Tensor"]
    uses_density: bool
    help: str


def _stack_weighted(deltas: Sequence["torch.Tensor"], weights: Sequence[float]) -> "torch.Tensor":
    import torch

    stacked = torch.stack(list(deltas))
    w = torch.tensor(list(weights), dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
    return stacked * w


def _linear(deltas, weights, density=None, generator=None):
    """Weighted sum; plain arithmetic, so it takes numpy arrays (the fold) as well as torch tensors."""
    total = deltas[0] * weights[0]
    for d, w in zip(deltas[1:], weights[1:]):
        total += d * w
    return total


def _trim_by_magnitude(t: "torch.Tensor", density: float) -> "torch.Tensor":
    """Keep the ``density`` fraction of entries with the largest magnitude, zero the rest."""
    import torch

    if density >= 1:
        return t
    flat = t.reshape(-1)
    mask = torch.zeros_like(flat)
    k = int(density * flat.numel())
    mask[torch.topk(flat.abs(), k=k, largest=True).indices] = 1
    return t * mask.view(t.shape)


def _random_drop(t: "torch.Tensor", density: float, generator: "torch.Generator") -> "torch.Tensor":
    """DARE: keep each entry with probability ``density`` and rescale the kept ones by ``1/density``."""
    import torch

    if density >= 1:
        return t
    return t * torch.bernoulli(torch.full_like(t, density), generator=generator) / density


def _sign_consensus(trimmed: Sequence["torch.Tensor"], weights: Sequence[float]) -> "torch.Tensor":
    """TIES: elect each entry's sign from the summed (unweighted) trimmed deltas, then average the
    weighted entries that agree with it (disjoint mean)."""
    import torch

    stacked = torch.stack(list(trimmed))
    sign = stacked.sign()
    majority = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0)
    agree = sign == majority
    weighted = _stack_weighted(trimmed, weights)
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def _ties(deltas, weights, density, generator=None):
    return _sign_consensus([_trim_by_magnitude(d, density) for d in deltas], weights)


def _dare_linear(deltas, weights, density, generator):
    return _linear([_random_drop(d, density, generator) for d in deltas], weights)


def _dare_ties(deltas, weights, density, generator):
    return _sign_consensus([_random_drop(d, density, generator) for d in deltas], weights)


METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod("linear", _linear, False, "exact weighted sum of the adapters' deltas"),
        MergeMethod("cat", _linear, False, "same fold as linear; as an adapter, concatenated factors (lossless)"),
        MergeMethod("ties", _ties, True, "trim to density by magnitude, elect signs, disjoint mean (TIES)"),
        MergeMethod("dare_linear", _dare_linear, True, "random drop to density, rescale, weighted sum (DARE)"),
        MergeMethod("dare_ties", _dare_ties, True, "random drop to density, rescale, then TIES sign election"),
    )
}

DENSITY_METHODS = tuple(n for n, m in METHODS.items() if m.uses_density)


def get_method(name: str) -> MergeMethod:
    """The method called ``name``; ``MergeError`` listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise MergeError(f"unknown merge method {name!r} (known: {', '.join(METHODS)})") from None
