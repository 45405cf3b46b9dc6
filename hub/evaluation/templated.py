"""Evaluation rows as a prompt template shows them to the base: the prompt rewritten, the answer kept.

A template's few-shot answers are part of its prompt, not answers the model is measured on, so a
conversational row becomes a conversational prompt/completion row (TRL's completion-only loss
counts the last answer's tokens only) and a text row keeps its completion under the rendered
prompt. Single-turn rows, which the demo tasks are, are measured on exactly the tokens every
other adapter is measured on.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..prompt_template import PromptTemplate
from ..train.data import Example

__all__ = ["templated_examples"]


def templated_examples(template: PromptTemplate, examples: Sequence[Example]) -> list[Example]:
    """``examples`` with each prompt rewritten by ``template`` (``render`` for text, ``messages`` for a chat)."""
    out = []
    for ex in examples:
        completion: Any = ex.row["completion"] if "completion" in ex.row else ex.row["messages"][-1:]
        out.append(Example({"prompt": template.apply(ex.prompt), "completion": completion}, ex.source))
    return out
