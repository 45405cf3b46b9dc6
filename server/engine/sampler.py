"""The next token of each row: greedy, or drawn with temperature and top_p from the row's own generator.

Each sampled row owns a ``torch.Generator`` seeded from its request, so a seeded answer is the same
whatever else shares the batch. A row with penalties or biases has them applied to its own logits
first (``penalties``). A row held to a grammar chooses from a copy of its logits with the tokens
its grammar forbids at -inf (``structured``), which no bias or penalty lifts: the mask has the
last word. The batch's logits are never written. A row that cannot get a token (its
logits are NaN or infinite, or its penalties or draw raise) gets a ``RowFailure`` in place of its
token: the other rows keep theirs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import torch

from .penalties import adjust_logits
from .request import ErrorCode, RowFailure

if TYPE_CHECKING:
    from .request import SamplingParams
    from .structured.constraint import StepMasks

__all__ = ["new_generator", "sample"]

log = logging.getLogger(__name__)


def new_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The row's random generator: ``None`` for a greedy row, seeded by ``params.seed`` when given."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def sample(logits: torch.Tensor, rows: Sequence[tuple[SamplingParams, torch.Generator | None]],
           generated: Sequence[Sequence[int]] | None = None, masks: StepMasks | None = None) -> list[int | RowFailure]:
    """One token per row of ``logits`` (``[rows, vocab]``), given each row's params and generator
    (and the tokens it generated so far, which its penalties count), or the row's ``RowFailure``
    (its message a predicate: the caller names the row's model). Rows in ``masks`` choose among
    the tokens their grammar allows; their logits must be finite before the mask, as any row's."""
    # One transfer to the host per step: each row's greedy token, -1 where its logits are not finite.
    finite = torch.isfinite(logits).all(-1)  # before the masks' -inf
    if masks is not None:
        logits = masks.masked(logits)
    greedy = torch.where(finite, logits.argmax(-1), -1).tolist()
    out: list[int | RowFailure] = []
    for i, (params, generator) in enumerate(rows):
        if greedy[i] < 0:
            out.append(RowFailure(ErrorCode.NON_FINITE_LOGITS, "produced non-finite logits (NaN or inf)"))
        elif params.greedy and not params.adjusts_logits:
            out.append(greedy[i])
        else:
            try:
                x = logits[i]
                if params.adjusts_logits:
                    x = adjust_logits(x, params, generated[i] if generated else ())
                out.append(int(x.argmax()) if params.greedy else _draw(x, params, generator))
            except (RuntimeError, ValueError, IndexError) as e:  # torch reports bad probabilities as RuntimeError
                log.warning("sampling a row failed: %s", e)
                out.append(RowFailure(ErrorCode.SAMPLING_FAILED, f"failed to sample the next token: {e}"))
    return out


def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Subtracting the maximum before dividing keeps every value finite in float32 (the largest
    becomes exactly 0, so the probabilities never sum to 0), whatever the logits' scale."""
    x = logits.float()
    probs = torch.softmax((x - x.max()) / params.temperature, -1)
    if params.top_p < 1:
        probs = _top_p(probs, params.top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose probability reaches ``top_p``."""
    sorted_probs, order = probs.sort(descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs[outside] = 0
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)
