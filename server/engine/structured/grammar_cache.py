"""Compiled grammars, one per ``GrammarSpec``, compiled off the engine thread and kept in a bounded LRU.

Compiling turns a schema into xgrammar's token-level automaton for this tokenizer (the vocabulary
is walked once per grammar): milliseconds for a small schema, ~0.1 s for a 50 KB one. It runs on a
small pool of its own threads, never on the engine's, so decoding goes on meanwhile (xgrammar
compiles in C++ without the GIL). The HTTP thread that asked waits for the result before it
submits the request, as vLLM's front end waits for a grammar before the request joins a batch, so
a grammar that does not compile is that request's 400, not a row failing mid-batch.

JSON answers never hold a raw control character (JSON escapes them in strings, and compact JSON
has no newlines or tabs between values), yet xgrammar 0.2.9 lets a string with a ``maxLength``
take bytes 0x00-0x1F (pydantic then refuses the answer): a JSON grammar's rows (and a structural
tag's, whose tool-call arguments are JSON) also carry a token filter that clears every token
holding such a byte (``CompiledConstraint.token_filter``).

Identical specs share one compilation, and failures are cached like successes: a client
repeating a bad schema costs a lookup, not a compile. The cache is bounded by entries and by
the compiled grammars' bytes (xgrammar's own cache is off: this one is the only one).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..compute_threads import single_threaded
from .spec import GrammarInvalid, GrammarKind, GrammarSpec

if TYPE_CHECKING:
    import torch
    import xgrammar
    from transformers import PreTrainedTokenizerBase

__all__ = ["GrammarCache", "CompiledConstraint"]

# Compact JSON (", " and ": " separators, no newlines or indents): with free whitespace a model
# can pad an answer with blanks until max_tokens (vLLM's disable-any-whitespace exists for this).
_ANY_WHITESPACE = False
_JSON_OBJECT_SCHEMA = '{"type": "object"}'  # what OpenAI's json_object promises, as vLLM compiles it
# xgrammar prefixes its messages with "[hh:mm:ss] /path/file.cc:123: ".
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")
_MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class CompiledConstraint:
    """A spec compiled for this engine's tokenizer: what each constrained row starts a matcher from."""

    spec: GrammarSpec
    grammar: xgrammar.CompiledGrammar
    stop_ids: tuple[int, ...]
    token_filter: torch.Tensor | None = None  # a bitmask row ANDed with the grammar's at every step

    @property
    def memory_bytes(self) -> int:
        return int(self.grammar.memory_size_bytes)


class GrammarCache:
    """Compiles specs for one tokenizer, at most ``compile_threads`` at a time.

    Args:
        tokenizer: the base's tokenizer (its decoded vocabulary is what grammars are compiled against).
        vocab_size: the width of the model's logits (may exceed the tokenizer's: padded rows).
        stop_ids: the tokens that end an answer; a finished grammar allows only these.
        max_entries, max_bytes: bounds of the cache (least recently used goes first).
        compile_threads: compilations that run at once (each takes one core while it runs).
        timeout_s: how long a caller waits for a compilation before its spec counts as invalid.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_ids: Sequence[int], *,
                 max_entries: int = 256, max_bytes: int = 256 << 20, compile_threads: int = 1,
                 timeout_s: float = 30.0) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = tuple(sorted(stop_ids))
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=compile_threads, thread_name_prefix="adapterhub-grammar")
        self._entries: OrderedDict[GrammarSpec, Future[CompiledConstraint]] = OrderedDict()
        # Reentrant: a compilation already done runs its eviction callback inside ``_future``'s lock.
        self._lock = threading.RLock()
        self._compiler: xgrammar.GrammarCompiler | None = None  # built by the first compilation, in the pool
        self._json_filter: torch.Tensor | None = None  # with the compiler
        self._compiler_lock = threading.Lock()
        self.compiled = 0  # compilations run (hits cost none)

    def get(self, spec: GrammarSpec) -> CompiledConstraint:
        """The compiled grammar of ``spec``, compiling it if no one has; ``GrammarInvalid`` (one
        line) when it does not compile or takes longer than ``timeout_s``."""
        future = self._future(spec)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            raise GrammarInvalid(f"the {spec.kind.value.replace('_', ' ')} took longer than {self.timeout_s:g} s "
                                 f"to compile") from None

    def __len__(self) -> int:
        return len(self._entries)

    def _future(self, spec: GrammarSpec) -> Future[CompiledConstraint]:
        with self._lock:
            future = self._entries.get(spec)
            if future is not None:
                self._entries.move_to_end(spec)
                return future
            future = self._pool.submit(self._compile, spec)
            self._entries[spec] = future
            future.add_done_callback(lambda _: self._evict())
            self._evict_locked()
            return future

    def _evict(self) -> None:
        with self._lock:
            self._evict_locked()

    def _evict_locked(self) -> None:
        """Drop least recently used entries beyond the bounds; a compilation still running stays
        (its callers wait on it) and counts no bytes until it is done."""
        total = sum(_bytes(f) for f in self._entries.values())
        for spec in list(self._entries):
            if len(self._entries) <= self.max_entries and total <= self.max_bytes:
                return
            future = self._entries[spec]
            if future.done():
                total -= _bytes(future)
                del self._entries[spec]

    def _compile(self, spec: GrammarSpec) -> CompiledConstraint:
        """In a pool thread. Its torch ops (the token filter) run single-threaded: an OpenMP pool
        left on this thread would slow every decode step (``compute_threads``)."""
        with single_threaded():
            compiler = self._grammar_compiler()
        try:
            grammar = _compile(compiler, spec)
        except Exception as e:  # the client's text is the only input: whatever xgrammar raises is about it
            raise GrammarInvalid(_one_line(spec, e)) from None
        with self._lock:
            self.compiled += 1
        json_kinds = (GrammarKind.JSON_SCHEMA, GrammarKind.JSON_OBJECT, GrammarKind.STRUCTURAL_TAG)
        return CompiledConstraint(spec, grammar, self.stop_ids, self._json_filter if spec.kind in json_kinds else None)

    def _grammar_compiler(self) -> xgrammar.GrammarCompiler:
        """Built once, in the pool: reading a large vocabulary takes a moment nobody should wait
        for unless they use structured outputs."""
        with self._compiler_lock:
            if self._compiler is None:
                import xgrammar

                info = xgrammar.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self.vocab_size,
                                                               stop_token_ids=list(self.stop_ids) or None)
                self._json_filter = _without_control_bytes(info, self.vocab_size)
                self._compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            return self._compiler


def _without_control_bytes(info: xgrammar.TokenizerInfo, vocab_size: int) -> torch.Tensor:
    """A bitmask row allowing every token but those whose bytes include one below 0x20 (special
    tokens, the stop tokens among them, stay allowed: their text is not part of the answer)."""
    import torch
    import xgrammar

    allowed = torch.ones(vocab_size, dtype=torch.bool)
    special = set(info.special_token_ids) | set(info.stop_token_ids)
    for token, piece in enumerate(info.decoded_vocab[:vocab_size]):
        if token not in special and any(b < 0x20 for b in piece):
            allowed[token] = False
    words = xgrammar.get_bitmask_shape(1, vocab_size)[1]
    padded = torch.zeros(words * 32, dtype=torch.int64)
    padded[:vocab_size] = allowed.to(torch.int64)
    unsigned = (padded.view(words, 32) << torch.arange(32, dtype=torch.int64)).sum(-1)
    return ((unsigned + (1 << 31)) % (1 << 32) - (1 << 31)).to(torch.int32)  # xgrammar's int32 words


def _compile(compiler: xgrammar.GrammarCompiler, spec: GrammarSpec) -> xgrammar.CompiledGrammar:
    if spec.kind is GrammarKind.JSON_SCHEMA:
        return compiler.compile_json_schema(spec.source, any_whitespace=_ANY_WHITESPACE)
    if spec.kind is GrammarKind.JSON_OBJECT:
        return compiler.compile_json_schema(_JSON_OBJECT_SCHEMA, any_whitespace=_ANY_WHITESPACE)
    if spec.kind is GrammarKind.REGEX:
        return compiler.compile_regex(spec.source)
    if spec.kind is GrammarKind.CHOICE:
        return compiler.compile_grammar(_choice_grammar(spec.choices))
    if spec.kind is GrammarKind.STRUCTURAL_TAG:
        return compiler.compile_structural_tag(spec.source)
    return compiler.compile_grammar(spec.source)


def _choice_grammar(choices: list[str]) -> str:
    """An EBNF rule matching exactly one of ``choices``: each a JSON-escaped literal (xgrammar's
    string literals take JSON's escapes)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _one_line(spec: GrammarSpec, error: Exception) -> str:
    text = " ".join(_LOCATION.sub("", str(error).strip()).split())
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[:_MAX_MESSAGE_CHARS] + "…"
    return f"the {spec.kind.value.replace('_', ' ')} does not compile: {text}"


def _bytes(future: Future[Any]) -> int:
    if not future.done() or future.exception() is not None:
        return 0
    return future.result().memory_bytes
