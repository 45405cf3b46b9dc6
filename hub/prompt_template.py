"""Prompt templates: the zero-parameter adapter (a system text, an instruction template, few-shot pairs).

Of the three ways to adapt a model (prompting, prompt tuning, LoRA), prompting changes no weight:
it changes the text the model reads. A template is versioned, tagged, pulled, compared and served
per request like the other two, so it is stored the same way: a folder holding one small JSON
file, ``prompt_template.json``::

    {"format_version": 1,
     "system": "You label reviews.",                       (optional)
     "template": "Review: {input}\\nSentiment:",           (exactly one {input})
     "examples": [{"input": "Great film.", "output": " positive"}],   (optional few-shot pairs)
     "base_model_name_or_path": "org/base"}                (optional; push --base overrides it)

The template is Python's ``str.format`` syntax with a single field, ``{input}``; a literal brace is
written twice (``{{``, ``}}``). Everything else is refused with one line: unknown fields, a second
placeholder, anything but strings, more than ``MAX_EXAMPLES`` pairs or ``MAX_TEXT_CHARS``
characters in all, so a served template can never make a request unboundedly large.

How it applies (the server, ``adapterhub eval`` and the demo all call these two):

- ``render(text)`` for a completion prompt: the system text, each example as the template filled
  with its input followed directly by its output, then the template filled with ``text``, joined
  by blank lines;
- ``messages(conversation)`` for a chat: the system text becomes the system message (placed before
  the conversation's own system text when it has one), the examples become user/assistant turns
  after it, and the last user message is wrapped by the template.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .echo import echo
from .errors import InvalidAdapter
from .peft_format.config_values import preview
from .regular_file import read_regular

__all__ = ["PROMPT_TEMPLATE_FILE", "FORMAT_VERSION", "MAX_EXAMPLES", "MAX_TEXT_CHARS", "FewShot", "PromptTemplate",
           "parse_prompt_template", "load_prompt_template", "write_prompt_template"]

PROMPT_TEMPLATE_FILE = "prompt_template.json"
FORMAT_VERSION = 1
MAX_EXAMPLES = 64
MAX_TEXT_CHARS = 32_768  # system + template + every example: what the template may add to each request
_MAX_FILE_BYTES = 256 << 10  # the JSON of MAX_TEXT_CHARS characters, escaped, fits well within
_MAX_BASE_CHARS = 1024
_FIELDS = ("format_version", "system", "template", "examples", "base_model_name_or_path")
_SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class FewShot:
    input: str
    output: str


@dataclass(frozen=True)
class PromptTemplate:
    """A validated template; build one with ``parse_prompt_template`` (which checks it)."""

    template: str
    system: str | None = None
    examples: tuple[FewShot, ...] = ()
    base_model: str | None = None

    def fill(self, text: str) -> str:
        """The template with ``{input}`` replaced by ``text`` (taken literally: its braces are not fields)."""
        return self.template.format(input=text)

    def render(self, text: str) -> str:
        """The completion prompt for ``text``: system text, filled examples with outputs, the filled template."""
        parts = [self.system] if self.system else []
        parts += [self.fill(e.input) + e.output for e in self.examples]
        parts.append(self.fill(text))
        return "\n\n".join(parts)

    def messages(self, conversation: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The chat ``conversation`` as the template shapes it (see the module's docstring); a
        turn's other keys (an assistant's ``tool_calls``, a result's ``tool_call_id``) are kept."""
        turns = [dict(m) for m in conversation]
        last_user = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "user"), None)
        if last_user is None:
            raise InvalidAdapter("a prompt template wraps the last user message, and the conversation has none")
        turns[last_user]["content"] = self.fill(turns[last_user]["content"])
        head: list[dict[str, Any]] = []
        if self.system:
            if turns and turns[0]["role"] in _SYSTEM_ROLES:
                first = turns.pop(0)
                head.append({"role": first["role"], "content": f"{self.system}\n\n{first['content']}"})
            else:
                head.append({"role": "system", "content": self.system})
        elif turns and turns[0]["role"] in _SYSTEM_ROLES:
            head.append(turns.pop(0))
        for e in self.examples:
            head += [{"role": "user", "content": self.fill(e.input)}, {"role": "assistant", "content": e.output}]
        return head + turns

    def apply(self, prompt: str | Sequence[Mapping[str, str]]) -> str | list[dict[str, str]]:
        """``render`` for a text prompt, ``messages`` for a conversation (what evaluation rows hold)."""
        return self.render(prompt) if isinstance(prompt, str) else self.messages(prompt)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format_version": FORMAT_VERSION, "system": self.system, "template": self.template,
                               "examples": [{"input": e.input, "output": e.output} for e in self.examples]}
        if self.base_model:
            out["base_model_name_or_path"] = self.base_model
        return out

    def summary(self) -> dict[str, Any]:
        """What the registry index records (texts as previews; the stored file keeps them whole)."""
        out: dict[str, Any] = {"format_version": FORMAT_VERSION, "template": preview(self.template),
                               "examples": len(self.examples), "chars": _text_chars(self)}
        if self.system:
            out["system"] = preview(self.system)
        return out


def _text_chars(t: PromptTemplate) -> int:
    return len(t.template) + len(t.system or "") + sum(len(e.input) + len(e.output) for e in t.examples)


def _text(value: Any, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidAdapter(f"{what} must be a non-empty string" + (" or null" if optional else ""))
    if "\x00" in value:
        raise InvalidAdapter(f"{what} must not contain NUL characters")
    return value


def _check_template(template: str) -> None:
    """Exactly one ``{input}`` and no other field; literal braces doubled."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise InvalidAdapter(f"template: {e} (write a literal brace twice: {{{{ or }}}})") from None
    other = [name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
             for name, spec, conv in fields if name != "input" or spec or conv]
    if other:
        raise InvalidAdapter(f"template: only {{input}} may be a placeholder, found {{{other[0][:40]}}} "
                             "(write a literal brace twice: {{ or }})")
    if len(fields) != 1:
        raise InvalidAdapter(f"template must hold exactly one {{input}} placeholder, found {len(fields)}")


def _examples(value: Any) -> tuple[FewShot, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidAdapter("examples must be a list of {\"input\": ..., \"output\": ...} objects")
    if len(value) > MAX_EXAMPLES:
        raise InvalidAdapter(f"examples: at most {MAX_EXAMPLES} pairs, found {len(value)}")
    out = []
    for i, pair in enumerate(value):
        if not isinstance(pair, dict) or set(pair) != {"input", "output"}:
            raise InvalidAdapter(f"examples[{i}] must be an object with exactly the fields input and output")
        out.append(FewShot(_text(pair["input"], f"examples[{i}].input"),
                           _text(pair["output"], f"examples[{i}].output")))
    return tuple(out)


def parse_prompt_template(doc: Any) -> PromptTemplate:
    """A ``PromptTemplate`` from the parsed JSON, or ``InvalidAdapter`` with one line saying what is wrong."""
    if not isinstance(doc, dict):
        raise InvalidAdapter("a prompt template is a JSON object")
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise InvalidAdapter(f"unknown field {echo(unknown[0])} (a prompt template has {', '.join(_FIELDS)})")
    version = doc.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise InvalidAdapter(f"format_version must be {FORMAT_VERSION}, got {json.dumps(version)[:20]}")
    template = _text(doc.get("template"), "template")
    _check_template(template)
    base = _text(doc.get("base_model_name_or_path"), "base_model_name_or_path", optional=True)
    if base is not None and (len(base) > _MAX_BASE_CHARS or "\n" in base):
        raise InvalidAdapter(f"base_model_name_or_path must be one line of at most {_MAX_BASE_CHARS} characters")
    parsed = PromptTemplate(template=template, system=_text(doc.get("system"), "system", optional=True),
                            examples=_examples(doc.get("examples")), base_model=base)
    chars = _text_chars(parsed)
    if chars > MAX_TEXT_CHARS:
        raise InvalidAdapter(f"the template's texts take {chars} characters, over {MAX_TEXT_CHARS}")
    return parsed


def load_prompt_template(path: str | os.PathLike) -> PromptTemplate:
    """Read and validate a ``prompt_template.json`` (a regular file, bounded); errors name the file."""
    path = Path(path)
    try:
        doc = json.loads(read_regular(path, _MAX_FILE_BYTES, PROMPT_TEMPLATE_FILE).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidAdapter(f"{path}: not valid JSON ({e})") from None
    try:
        return parse_prompt_template(doc)
    except InvalidAdapter as e:
        raise InvalidAdapter(f"{path}: {e}") from None


def write_prompt_template(template: PromptTemplate, folder: str | os.PathLike) -> Path:
    """Write ``template`` as a folder ``adapterhub push`` takes; returns the folder."""
    folder = Path(folder)
    parse_prompt_template(template.to_dict())  # never write what push would refuse
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROMPT_TEMPLATE_FILE).write_text(json.dumps(template.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    return folder
