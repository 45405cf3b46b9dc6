"""One row's place in its grammar, and one step's token masks for the constrained rows of a batch.

Before each choice of tokens the engine thread asks the constrained rows' matchers which tokens
may come next (``StepMasks.of``: xgrammar fills a bitmask row per constrained row, a bit per
token); the sampler takes a copy of the batch's logits with those rows masked
(``StepMasks.masked``: masked tokens become -inf, which no bias or penalty can lift, so masking
before them equals masking last), and once the tokens are chosen the matchers accept them (one
call, ``StepMasks.accept``).

Rows without a constraint are never touched: they keep their logits' values bit for bit, whatever
their neighbours ask, and the batch's own logits (which log-probabilities are read from) are never
written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from .grammar_cache import CompiledConstraint

__all__ = ["RowConstraint", "StepMasks"]


class RowConstraint:
    """A row's matcher: where its answer so far stands in its grammar. Once the grammar is
    complete only the stop tokens are allowed; the row ends on one as any row ends on its stop
    token. On a base without stop tokens the matcher ends by itself (``terminated``) when the
    grammar is complete."""

    def __init__(self, compiled: CompiledConstraint) -> None:
        import xgrammar

        self.matcher = xgrammar.GrammarMatcher(compiled.grammar,
                                               override_stop_tokens=list(compiled.stop_ids) or None,
                                               terminate_without_stop_token=not compiled.stop_ids)
        self.token_filter = compiled.token_filter
        self._ends_by_itself = not compiled.stop_ids
        self.terminated = False

    def accepted(self) -> None:
        """Note the matcher's state after it accepted a token."""
        if self._ends_by_itself:
            self.terminated = bool(self.matcher.is_terminated())


class StepMasks:
    """This step's bitmasks for the constrained rows (``rows``) of a batch of ``len(constraints)``.

    Args:
        constraints: each batch row's constraint, ``None`` for a free row.
        bitmask: one int32 bitmask row per batch row (free rows' rows unused), on the logits' device.
        vocab_size: the logits' width.
    """

    def __init__(self, constraints: Sequence[RowConstraint | None], bitmask: torch.Tensor, vocab_size: int) -> None:
        self.rows = [i for i, c in enumerate(constraints) if c is not None]
        self._constraints = [constraints[i] for i in self.rows]
        self.bitmask = bitmask
        self.vocab_size = vocab_size

    @classmethod
    def of(cls, constraints: Sequence[RowConstraint | None], vocab_size: int,
           device: torch.device) -> StepMasks | None:
        """The masks of the rows that have a constraint; ``None`` when none has (nothing to do)."""
        rows = [i for i, c in enumerate(constraints) if c is not None]
        if not rows:
            return None
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(len(constraints), vocab_size)
        for i in rows:
            constraints[i].matcher.fill_next_token_bitmask(bitmask, i)
        by_filter: dict[int, tuple[torch.Tensor, list[int]]] = {}
        for i in rows:
            token_filter = constraints[i].token_filter
            if token_filter is not None:
                by_filter.setdefault(id(token_filter), (token_filter, []))[1].append(i)
        words = bitmask.numpy()  # the same memory: numpy's ops cost a fraction of torch's dispatch here
        for token_filter, filtered in by_filter.values():  # one per tokenizer: JSON rows share it
            words[filtered] &= token_filter.numpy()
        return cls(constraints, bitmask.to(device, non_blocking=True), vocab_size)

    def masked(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of ``logits`` (``[rows, vocab]``, float32) whose constrained rows allow only their
        grammar's tokens (-inf elsewhere); the free rows' values are copied unchanged."""
        import xgrammar

        out = logits.float().clone()
        xgrammar.apply_token_bitmask_inplace(out, self.bitmask, vocab_size=self.vocab_size, indices=self.rows)
        return out

    def accept(self, tokens: Sequence[int | object]) -> set[int]:
        """Advance each constrained row's matcher past its token (``tokens`` per batch row; a row
        without an ``int`` token has failed and is skipped): the rows whose token their grammar
        refused (none should be: the mask allowed only the grammar's tokens)."""
        import xgrammar

        taken = [(i, c) for i, c in zip(self.rows, self._constraints) if isinstance(tokens[i], int)]
        if not taken:
            return set()
        accepted = xgrammar.BatchGrammarMatcher.batch_accept_token([c.matcher for _, c in taken],
                                                                  [tokens[i] for i, _ in taken])
        refused = set()
        for (i, c), ok in zip(taken, accepted):
            if ok:
                c.accepted()
            else:
                refused.add(i)
        return refused
