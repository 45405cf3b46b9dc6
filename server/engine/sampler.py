"""The next token of each row: greedy, or drawn with temperature and top_p from the row's own generator.

Each sampled row owns a ``torch.Generator`` seeded from its request, so a seeded answer is the same
whatever else shares the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from .request import SamplingParams

__all__ = ["new_generator", "sample"]


def new_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The row's random generator: ``None`` for a greedy row, seeded by ``params.seed`` when given."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed % (1 << 64))
    else:
        generator.seed()
    return generator


def sample(logits: torch.Tensor, rows: Sequence[tuple[SamplingParams, torch.Generator | None]]) -> list[int]:
    """One token per row of ``logits`` (``[rows, vocab]``), given each row's params and generator."""
    greedy = logits.argmax(-1).tolist()
    out = []
    for i, (params, generator) in enumerate(rows):
        if params.greedy:
            out.append(greedy[i])
            continue
        probs = torch.softmax(logits[i] / params.temperature, -1)
        if params.top_p < 1:
            probs = _top_p(probs, params.top_p)
        out.append(int(torch.multinomial(probs, 1, generator=generator)))
    return out


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose probability reaches ``top_p``."""
    sorted_probs, order = probs.sort(descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs[outside] = 0
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)
