"""What a request's answer must match, as a value: the key its compiled grammar is cached under.

Built in the HTTP thread from the request's fields (``server.http.structured_fields``); the text is
bounded here, before anything is compiled, so one request cannot make the compiler work on an
arbitrarily large schema. Nothing here imports xgrammar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Sequence

__all__ = ["GrammarKind", "GrammarSpec", "GrammarInvalid", "GrammarTooLarge", "MAX_GRAMMAR_CHARS"]

# A schema of a few hundred properties is ~50 KB of JSON and compiles in about 0.1 s; past this a
# request is more likely an attempt to occupy the compiler than a real answer shape.
MAX_GRAMMAR_CHARS = 64 * 1024


class GrammarKind(StrEnum):
    """The kinds of constraint the OpenAI and vLLM fields can ask for."""

    JSON_SCHEMA = "json_schema"  # response_format json_schema, structured_outputs.json, guided_json
    JSON_OBJECT = "json_object"  # response_format json_object: any JSON object
    REGEX = "regex"
    CHOICE = "choice"  # one of a list of strings, verbatim
    GRAMMAR = "grammar"  # an EBNF grammar (xgrammar's dialect, as vLLM's guided_grammar)
    STRUCTURAL_TAG = "structural_tag"  # xgrammar's structural tag (JSON): tool calls that must be made


class GrammarTooLarge(ValueError):
    """A schema, regex, grammar or choice list whose text is longer than ``MAX_GRAMMAR_CHARS``."""


class GrammarInvalid(ValueError):
    """A constraint that cannot be compiled (a malformed schema, regex or grammar); one line."""


@dataclass(frozen=True)
class GrammarSpec:
    """One constraint: its kind and its text (a JSON schema as compact JSON, in the key order the
    client sent, which is the order the answer's properties take; a regex; an EBNF grammar; the
    choices as a JSON list; a structural tag as compact JSON). Use the ``json_schema``/``choice``/... constructors.

    Args:
        kind: what ``source`` is.
        source: the constraint's text, at most ``MAX_GRAMMAR_CHARS`` characters.
    """

    kind: GrammarKind
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.source) > MAX_GRAMMAR_CHARS:
            raise GrammarTooLarge(f"the {self.kind.value.replace('_', ' ')} is {len(self.source)} characters, "
                                  f"over this server's limit of {MAX_GRAMMAR_CHARS}")

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> GrammarSpec:
        return cls(GrammarKind.JSON_SCHEMA, _compact(schema))

    @classmethod
    def json_object(cls) -> GrammarSpec:
        return cls(GrammarKind.JSON_OBJECT)

    @classmethod
    def regex(cls, pattern: str) -> GrammarSpec:
        return cls(GrammarKind.REGEX, pattern)

    @classmethod
    def choice(cls, choices: Sequence[str]) -> GrammarSpec:
        if not choices:
            raise GrammarInvalid("the choice list is empty")
        return cls(GrammarKind.CHOICE, _compact(list(choices)))

    @classmethod
    def grammar(cls, ebnf: str) -> GrammarSpec:
        return cls(GrammarKind.GRAMMAR, ebnf)

    @classmethod
    def structural_tag(cls, tag: dict[str, Any]) -> GrammarSpec:
        return cls(GrammarKind.STRUCTURAL_TAG, _compact(tag))

    @property
    def choices(self) -> list[str]:
        return json.loads(self.source) if self.kind is GrammarKind.CHOICE else []


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
