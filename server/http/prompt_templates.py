"""A request's prompt text through its prompt-template adapter, as the HTTP layer answers for it.

``model`` naming a ``prompt_template`` version rewrites the prompt (``PromptTemplate.render`` for
``/v1/completions``, ``PromptTemplate.messages`` for ``/v1/chat/completions``) and the engine runs
the rewritten prompt as a base row, batched with every other kind. Rendering and tokenizing are the
library's one path (``adapterhub.prompt_encoding``); here its refusals become 400s. A template
applies to text, so a completion prompt sent as token ids is refused with a 400 rather than decoded
and re-encoded (decoding is lossy for some tokenizers, and the client would get tokens it did not
send).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from adapterhub import error_codes as codes
from adapterhub.echo import echo
from adapterhub.errors import InvalidAdapter
from adapterhub.prompt_encoding import EncodedPrompt, encode_templated

from .errors import ApiError

if TYPE_CHECKING:
    from adapterhub.prompt_template import PromptTemplate

__all__ = ["encode_request_prompt", "refuse_token_ids"]


def encode_request_prompt(tokenizer: Any, prompt: str | Sequence[Mapping[str, Any]], template: PromptTemplate | None,
                          check_text: Callable[[str], None],
                          render_chat: Callable[[Sequence[Mapping[str, Any]]], str] | None = None) -> EncodedPrompt:
    """``adapterhub.prompt_encoding.encode_templated``; a 400 when the template finds no user turn to wrap."""
    try:
        return encode_templated(tokenizer, prompt, template, check_text, render_chat)
    except InvalidAdapter as e:
        raise ApiError(codes.INVALID_VALUE, str(e)) from None


def refuse_token_ids(template: PromptTemplate | None, model: str) -> None:
    """A 400 when a template would have to apply to a prompt sent as token ids."""
    if template is not None:
        raise ApiError(codes.INVALID_VALUE,
                       f"{echo(model)} is a prompt template, which applies to text: send 'prompt' as a string "
                       "or a list of strings, not token ids")
