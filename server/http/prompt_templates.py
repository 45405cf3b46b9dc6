"""Applying a prompt-template adapter to a request's text, before it is tokenized.

``model`` naming a ``prompt_template`` version rewrites the prompt (``PromptTemplate.render`` for
``/v1/completions``, ``PromptTemplate.messages`` for ``/v1/chat/completions``) and the engine runs
the rewritten prompt as a base row, batched with every other kind. A template applies to text, so
a completion prompt sent as token ids is refused with a 400 rather than decoded and re-encoded
(decoding is lossy for some tokenizers, and the client would get tokens it did not send).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapterhub import error_codes as codes
from adapterhub.echo import echo
from adapterhub.errors import InvalidAdapter

from .errors import ApiError

if TYPE_CHECKING:
    from adapterhub.prompt_template import PromptTemplate
    from adapterhub.registry import AdapterVersion
    from adapterhub.server.engine.engine import Engine

__all__ = ["template_of", "refuse_token_ids", "templated_messages"]


def template_of(engine: Engine, version: AdapterVersion | None) -> PromptTemplate | None:
    """The template ``version`` applies, or ``None`` for the base and the other kinds."""
    return engine.adapters.prompt_template(version)


def refuse_token_ids(template: PromptTemplate | None, model: str) -> None:
    """A 400 when a template would have to apply to a prompt sent as token ids."""
    if template is not None:
        raise ApiError(codes.INVALID_VALUE,
                       f"{echo(model)} is a prompt template, which applies to text: send 'prompt' as a string "
                       "or a list of strings, not token ids")


def templated_messages(template: PromptTemplate | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as the template shapes it (unchanged without one); a 400 when it has no user turn."""
    if template is None:
        return messages
    try:
        return template.messages(messages)
    except InvalidAdapter as e:
        raise ApiError(codes.INVALID_VALUE, str(e)) from None
