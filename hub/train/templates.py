"""How a conversation becomes text: the base's chat template, else the Alpaca template as a chat template.

Training (TRL), evaluation and ``Engine.generate`` all render through ``chat_template_of``, so an
adapter sees at generation time exactly the prompt it was trained on. The Alpaca template is a
Jinja chat template with ``{% generation %}`` markers, so a base without a template of its own
still gets TRL's assistant-only loss: its single-turn rendering is the classic
``Below is an instruction ...\\n\\n### Instruction:\\n{prompt}\\n\\n### Response:\\n`` after the
begin token, the response followed by the end token.

``training_chat_template`` picks the template TRL trains conversations with: the base's own when
it marks the assistant's tokens, else TRL's training version of a known template, else None (the
caller then trains single-turn rows as prompt/completion, which needs no markers).
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["ALPACA_CHAT_TEMPLATE", "chat_template_of", "render_prompt", "encode_prompt", "encode_text",
           "training_chat_template"]

ALPACA_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '\\n\\n### Response:\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] == 'assistant' %}{{ '\\n\\n### Instruction:\\n' }}"
    "{% else %}{{ '\\n\\n' }}{% endif %}"
    "{{ message['content'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\n### Response:\\n' }}{% endif %}"
)


def chat_template_of(tokenizer: Any) -> str:
    """The template conversations are rendered with for this base."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or ALPACA_CHAT_TEMPLATE


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The prompt text the model sees before its response."""
    return tokenizer.apply_chat_template(list(messages), chat_template=chat_template_of(tokenizer), tokenize=False,
                                         add_generation_prompt=True)


def encode_prompt(tokenizer: Any, prompt: Sequence[dict[str, str]] | str) -> list[int]:
    """Token ids generation starts from: a conversation as rendered above, a string as TRL tokenizes text rows."""
    if isinstance(prompt, str):
        return encode_text(tokenizer, prompt, rendered_chat=False)
    return encode_text(tokenizer, render_prompt(tokenizer, prompt), rendered_chat=True)


def encode_text(tokenizer: Any, text: str, *, rendered_chat: bool) -> list[int]:
    """The token ids of a prompt text: with the tokenizer's special tokens, except for a text a chat
    template rendered, which wrote its own (begin token, headers) into the text."""
    return list(tokenizer(text=text, add_special_tokens=not rendered_chat)["input_ids"])


def training_chat_template(tokenizer: Any) -> str | None:
    """A template that marks the assistant's tokens for TRL's ``assistant_only_loss``, or None if none is known."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = chat_template_of(tokenizer)
    if has_generation_markers(template):
        return template
    try:
        patched = get_training_chat_template(_with_template(tokenizer, template))
    except ValueError:
        return None
    return patched if patched and has_generation_markers(patched) else None


def _with_template(tokenizer: Any, template: str) -> Any:
    if getattr(tokenizer, "chat_template", None) == template:
        return tokenizer
    import copy

    clone = copy.copy(tokenizer)
    clone.chat_template = template
    return clone
