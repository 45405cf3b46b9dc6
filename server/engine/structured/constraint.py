"""One row's place in its grammar, and one step's token masks for the constrained rows of a batch.

Before each choice of tokens the engine thread asks every constrained row's matcher which tokens
may come next (``StepMasks.of``: one bitmask row per constrained row, a bit per token, xgrammar's
``fill_next_token_bitmask``); the sampler applies a row's bitmask to that row's logits after its
penalties and biases (the mask is last: what the grammar forbids stays forbidden whatever the
biases say), and once the token is chosen the row's matcher accepts it (``RowConstraint.accept``).

Rows without a constraint are never touched: masks are applied to copies of the constrained rows'
logits only, so a free row's logits and its token are the same bits whatever its neighbours ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from .grammar_cache import CompiledConstraint

__all__ = ["RowConstraint", "StepMasks"]


class RowConstraint:
    """A row's matcher: where its answer so far stands in its grammar. Once the grammar is
    complete only the stop tokens are allowed, and accepting one terminates the matcher (the row
    then finishes with ``stop``). A base without stop tokens terminates when the grammar does."""

    def __init__(self, compiled: CompiledConstraint) -> None:
        import xgrammar

        self._matcher = xgrammar.GrammarMatcher(compiled.grammar,
                                                override_stop_tokens=list(compiled.stop_ids) or None,
                                                terminate_without_stop_token=not compiled.stop_ids)
        self._filter = compiled.token_filter

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        """Write the tokens the row may take next into ``bitmask[index]`` (CPU, int32 words)."""
        self._matcher.fill_next_token_bitmask(bitmask, index)
        if self._filter is not None:
            bitmask[index] &= self._filter

    def accept(self, token: int) -> bool:
        """Advance past ``token``; False when the grammar does not allow it (the row must fail)."""
        return bool(self._matcher.accept_token(token))

    @property
    def terminated(self) -> bool:
        return bool(self._matcher.is_terminated())


@dataclass(frozen=True)
class StepMasks:
    """This step's bitmasks: ``bitmask[j]`` is for batch row ``rows[j]`` (on the logits' device)."""

    rows: tuple[int, ...]
    bitmask: torch.Tensor
    vocab_size: int

    @classmethod
    def of(cls, constraints: Sequence[RowConstraint | None], vocab_size: int,
           device: torch.device) -> StepMasks | None:
        """The masks of the rows that have a constraint; ``None`` when none has (nothing to do)."""
        rows = tuple(i for i, c in enumerate(constraints) if c is not None)
        if not rows:
            return None
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(len(rows), vocab_size)
        for j, i in enumerate(rows):
            constraints[i].fill(bitmask, j)
        return cls(rows, bitmask.to(device, non_blocking=True), vocab_size)

    def __contains__(self, row: int) -> bool:
        return row in self.rows

    def masked_rows(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of the constrained rows' logits (``logits[rows]``, float32) with their masks applied."""
        picked = logits[list(self.rows)].float()
        self._apply(picked, self.bitmask)
        return picked

    def mask(self, row: int, logits: torch.Tensor) -> torch.Tensor:
        """Batch row ``row``'s logits (``[vocab]``, e.g. after its penalties) masked, as a copy."""
        j = self.rows.index(row)
        masked = logits.float().clone().unsqueeze(0)
        self._apply(masked, self.bitmask[j:j + 1])
        return masked[0]

    def _apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        import xgrammar

        xgrammar.apply_token_bitmask_inplace(logits, bitmask, vocab_size=self.vocab_size)
