"""ROUGE-L F-measure with Google's ``rouge-score`` package: the score Self-Instruct filters by and
evaluation reports.

It sits at the package's top level because the data tools (``data.curate``, ``data.self_instruct``)
and training's evaluation (``train.evaluate``) both need it, and ``data`` imports ``train`` (the row
shapes), so ``train`` importing it from ``data`` made the two packages import each other.

``rouge-score``'s tokenizer lowercases and keeps ASCII letters and digits only (as in the papers
that use it), so two texts without such characters score 0 against each other.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

__all__ = ["rouge_l", "max_rouge_l"]


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of ``prediction`` against ``reference`` (0 to 1; symmetric)."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


def max_rouge_l(text: str, others: Iterable[str]) -> tuple[float, str | None]:
    """The highest ROUGE-L of ``text`` against any of ``others``, and which one (None when empty)."""
    best, which = 0.0, None
    for other in others:
        score = rouge_l(text, other)
        if which is None or score > best:
            best, which = score, other
    return best, which
