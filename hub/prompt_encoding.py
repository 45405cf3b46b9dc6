"""A request's prompt as the model reads it: an adapter's prompt template applied, a chat rendered, tokenized.

The one path ``/v1/completions``, ``/v1/chat/completions``, ``EngineHandle.generate`` and
evaluation share, so a prompt-template adapter reads the same tokens whichever of them asks:

1. the template (``PromptTemplate.apply``): ``render`` for a text, ``messages`` for a conversation;
2. a conversation becomes text through the base's chat template (``train.templates.render_prompt``,
   the Alpaca template for a base without one, as training renders it);
3. ``check_text`` sees that text before it is tokenized (the server bounds its length there);
4. the text is tokenized, with the tokenizer's special tokens unless a chat template wrote its own.

A template that cannot shape a conversation (no user turn) raises ``InvalidAdapter``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .train.templates import encode_text, render_prompt

if TYPE_CHECKING:
    from .prompt_template import PromptTemplate

__all__ = ["EncodedPrompt", "encode_templated"]


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the model reads it: ``text`` (template applied, chat rendered) and its token ``ids``."""

    text: str
    ids: list[int]


def encode_templated(tokenizer: Any, prompt: str | Sequence[Mapping[str, Any]], template: PromptTemplate | None = None,
                     check_text: Callable[[str], None] | None = None,
                     render_chat: Callable[[Sequence[Mapping[str, Any]]], str] | None = None) -> EncodedPrompt:
    """``prompt`` (a text, or chat messages) with ``template`` applied (``None``: as it is), rendered and
    tokenized; ``render_chat`` renders a conversation instead of step 2 (the server's, which also
    writes the tools a request offers into it)."""
    shaped = prompt if template is None else template.apply(prompt)
    chat = not isinstance(shaped, str)
    text = (render_chat or functools.partial(render_prompt, tokenizer))(shaped) if chat else shaped
    if check_text is not None:
        check_text(text)
    return EncodedPrompt(text, encode_text(tokenizer, text, rendered_chat=chat))
