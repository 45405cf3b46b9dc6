"""The OpenAI-compatible API under ``/v1``: completions, chat completions, models, adapter loading.

``model`` names either the base (its name as served) or an adapter reference (``name``,
``name:tag``, ``name@3``); the engine resolves it and checks it against the base before anything is
generated, so an unknown adapter is a 404 and one made for another base a 409. Every field is
checked here, in the HTTP thread, and reported as a 400 naming the field; the engine only ever sees
valid requests. ``stream: true`` answers with server-sent events, one per generated token.

A ``model`` naming a prompt template (a zero-parameter adapter) rewrites the prompt text before it
is tokenized (``prompt_templates``); the answer then comes from the base, batched with the rest.

One extension beyond OpenAI's schema, vLLM's: ``return_token_ids: true`` adds each choice's
generated ``token_ids`` and the ``prompt_token_ids`` the model read (per choice on completions, once
on chat, as vLLM places them): the exactness tests compare them with PEFT's and with the
tokenizer's own ``apply_chat_template``.

Scores follow OpenAI's legacy and chat shapes as vLLM returns them: ``logprobs`` (an integer on
completions, ``true`` plus ``top_logprobs`` on chat) reports each generated token's
log-probability under the raw model (log-softmax of its logits before penalties and temperature,
vLLM's default); ``echo`` on completions returns the prompt before the answer, and with
``logprobs`` the prompt tokens' scores too (the first one ``null``), which is how evaluation
harnesses score multiple-choice answers. Structured outputs (``response_format`` json_object or
json_schema, vLLM's ``structured_outputs`` and ``guided_*``) hold the answer to a grammar compiled
before it is queued (``structured_fields``). Chat's ``tools`` are rendered through the base's chat
template (or a fallback system message, ``chat_prompt``); ``tool_choice: "required"`` or a named
function is enforced by a grammar (``tool_fields``), and the answer is read back into
``tool_calls`` (``tool_answers``). A field this server does not implement (``functions``,
``suffix``...) is refused with a 400 naming it, never ignored, unless it holds
its neutral value (``_NEUTRAL``).

What a request may cost is bounded before the work (``admission``): the body size before it is
parsed, the number of answers before any prompt is tokenized, a prompt's characters before it is
tokenized; a full engine queue answers 429 with ``Retry-After``. A non-streamed answer whose client
has gone is cancelled (``disconnect``), as a streamed one is when its next write fails. An answer
that fails in the engine fails alone, with the status of its cause's row in the error table.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator

from flask import Blueprint, Response, g, jsonify, request

from adapterhub import error_codes as codes
from adapterhub.echo import echo
from adapterhub.server.engine.engine import ContextTooLong, EngineStopped, QueueFull
from adapterhub.server.engine.request import (
    MAX_LOGPROBS,
    ErrorCode,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)

from .admission import AdmissionLimits, PromptBounds
from .chat_messages import conversation, conversation_chars
from .chat_prompt import ChatPrompts
from .disconnect import DisconnectWatcher
from .errors import ApiError
from .header_gate import add_gate
from .health import ServerMetrics
from .integers import token_id_key
from .json_body import json_object
from .openai_logprobs import chat_logprobs, completion_logprobs
from .prompt_templates import encode_request_prompt, refuse_token_ids
from .state import app_state
from .structured_fields import STRUCTURED_FIELDS, requested_grammar
from .tool_answers import ToolCallStream, answer_message
from .tool_fields import TOOL_FIELDS, ToolRequest, requested_tools
from .vllm_compat import with_served_names

if TYPE_CHECKING:
    from adapterhub.prompt_template import PromptTemplate
    from adapterhub.registry import AdapterVersion
    from adapterhub.server.engine.adapters.resolution import Resolved
    from adapterhub.server.engine.engine import Engine
    from adapterhub.server.engine.structured.grammar_cache import CompiledConstraint
    from adapterhub.server.engine.structured.spec import GrammarSpec

__all__ = ["bp", "init_app", "ADMIN_ENDPOINTS"]

bp = Blueprint("openai", __name__, url_prefix="/v1")
# Views that change what the server holds for every tenant: an admin key's (``api_keys``).
ADMIN_ENDPOINTS = frozenset({"openai.load_adapter", "openai.unload_adapter"})

MAX_CHOICES = 16
MAX_STOP = 4
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's (and vLLM's) limit for /v1/completions' integer ``logprobs``
# The fields each endpoint reads; any other is refused, naming it, unless null or neutral.
_COMMON_FIELDS = frozenset({"model", "stream", "stream_options", "n", "max_tokens", "max_completion_tokens",
                            "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty",
                            "logit_bias", "logprobs", "user", "return_token_ids"}) | STRUCTURED_FIELDS
_COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt", "echo"}
_CHAT_FIELDS = _COMMON_FIELDS | {"messages", "top_logprobs"} | TOOL_FIELDS
# Unimplemented fields whose value asks for nothing (what some clients send by default).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "tools": ([],), "functions": ([],), "tool_choice": ("none",), "function_call": ("none",),
    "suffix": ("",), "best_of": (1,),
}
_MISSING = object()


# --- plumbing ------------------------------------------------------------------------------------


def init_app(app: Any, engine: Engine, limits: AdmissionLimits) -> None:
    """Register the views with ``limits`` applied to ``engine``'s tokenizer and context."""
    state = app_state(app)
    state["limits"] = limits
    state["prompt_bounds"] = PromptBounds(limits, engine.tokenizer, engine.context_length)
    state["disconnects"] = DisconnectWatcher()
    state["chat_prompts"] = ChatPrompts(engine.tokenizer)
    # The server reads no more of a /v1 body than the limit (the view then answers 413 from its headers).
    add_gate(app, lambda method, path, headers: limits.max_body_bytes if path.startswith(bp.url_prefix) else None)
    app.register_blueprint(bp)


def _engine() -> Engine:
    engine = app_state().get("engine")
    if engine is None:
        raise ApiError(codes.NO_MODEL, "this server holds no model (start it with `adapterhub serve`)")
    return engine


def _metrics() -> ServerMetrics:
    return app_state()["metrics"]


@bp.after_request
def _count(response: Response) -> Response:
    _metrics().count_request(g.get("adapter_label", "unknown"), request.endpoint or "-", response.status_code)
    return response


def _bounds() -> PromptBounds:
    return app_state()["prompt_bounds"]


def _body() -> dict[str, Any]:
    app_state()["limits"].check_body(request.content_length)
    return json_object()


def _field(body: dict[str, Any], key: str, types: type | tuple[type, ...], what: str, default: Any = _MISSING) -> Any:
    """``body[key]`` checked against ``types`` (bools are never numbers); ``default`` when absent or null."""
    value = body.get(key)
    if value is None:
        if default is _MISSING:
            raise ApiError(codes.MISSING_FIELD, f"'{key}' is required")
        return default
    types = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise ApiError(codes.INVALID_TYPE, f"'{key}' must be {what}")
    return value


def _resolve(engine: Engine, body: dict[str, Any]) -> Resolved:
    model = _field(body, "model", str, "a string (an adapter reference or the base model's name)")
    adapter = engine.resolve(app_state()["lora_names"].target(model))  # a vLLM served name, else a reference
    g.adapter_label = adapter.label
    return adapter


def _neutral(key: str, value: Any) -> bool:
    """``value`` is one of ``key``'s neutral values, of the same JSON type (``true`` is not ``1``)."""
    return any(type(value) is type(v) and value == v for v in _NEUTRAL.get(key, ()))


def _refuse_unsupported(body: dict[str, Any], supported: frozenset[str]) -> None:
    """A field the endpoint does not implement is a 400 naming it: a client relying on it must
    not get an answer that silently ignored it."""
    for key, value in body.items():
        if key not in supported and value is not None and not _neutral(key, value):
            raise ApiError(codes.UNSUPPORTED_FIELD, f"{echo(key)} is not supported by this server")


def _logit_bias(body: dict[str, Any], vocab: int) -> dict[int, float]:
    """``logit_bias`` as OpenAI sends it (token ids as JSON object keys), ids checked against the vocabulary."""
    bias = _field(body, "logit_bias", dict, "an object mapping token ids to numbers", {})
    out = {}
    for key, value in bias.items():
        token = token_id_key(key, "logit_bias", vocab)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(codes.INVALID_TYPE, "'logit_bias' values must be numbers")
        out[token] = value
    return out


def _sampling(body: dict[str, Any], *, max_tokens: int, vocab: int, logprobs: int | None,
              prompt_logprobs: int | None) -> SamplingParams:
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP:
        raise ApiError(codes.INVALID_TYPE, f"'stop' must be a string or a list of at most {MAX_STOP} strings")
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_field(body, "temperature", (int, float), "a number", 1.0),
            top_p=_field(body, "top_p", (int, float), "a number", 1.0),
            seed=_field(body, "seed", int, "an integer", None),
            stop=tuple(s for s in stop if s),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            presence_penalty=_field(body, "presence_penalty", (int, float), "a number", 0.0),
            frequency_penalty=_field(body, "frequency_penalty", (int, float), "a number", 0.0),
            logit_bias=_logit_bias(body, vocab),
        )
    except ValueError as e:
        raise ApiError(codes.INVALID_VALUE, str(e)) from None


def _max_tokens(body: dict[str, Any], keys: tuple[str, ...], default: int | None, room: int) -> int:
    """The asked ``max_tokens`` (checked against the context later), or the default capped by ``room``."""
    for key in keys:
        value = _field(body, key, int, "an integer", None)
        if value is not None:
            if value < 1:
                raise ApiError(codes.INVALID_VALUE, f"'{key}' must be at least 1, got {value}")
            return value
    return max(1, min(default or room, room))


def _n(body: dict[str, Any]) -> int:
    n = _field(body, "n", int, "an integer", 1)
    if not 1 <= n <= MAX_CHOICES:
        raise ApiError(codes.INVALID_VALUE, f"'n' must be between 1 and {MAX_CHOICES}, got {n}")
    return n


def _check_ids(ids: list[int], vocab: int) -> list[int]:
    if not ids:
        raise ApiError(codes.INVALID_VALUE, "the prompt is empty")
    _bounds().check_tokens(len(ids), "the prompt")
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
        raise ApiError(codes.INVALID_VALUE, f"token ids must be integers in [0, {vocab})")
    return ids


# --- running requests ----------------------------------------------------------------------------


@dataclass
class _Choice:
    """One finished (or streaming) answer."""

    request: GenerationRequest
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


def _cancel(choices: list[_Choice]) -> None:
    for c in choices:
        c.request.stream.cancel()


def _submit(engine: Engine, adapter: Resolved, prompts: list[list[int]], params: SamplingParams,
            n: int, grammar: CompiledConstraint | None) -> list[_Choice]:
    """Queue ``n`` answers per prompt; all or nothing (``Engine.submit_all`` checks every prompt
    fits first, and a failure cancels those already queued).

    The j-th answer's seed is ``seed + j`` (the engine reduces seeds modulo 2**64). The answers are
    one group: the engine admits them round-robin with other requests', not all before them."""
    rows = [(ids, params if params.seed is None else replace(params, seed=params.seed + j))
            for ids in prompts for j in range(n)]
    try:
        return [_Choice(r) for r in engine.submit_all(rows, adapter, uuid.uuid4().hex, grammar)]
    except ContextTooLong as e:
        raise ApiError(codes.CONTEXT_LENGTH_EXCEEDED, str(e)) from None
    except EngineStopped as e:
        raise ApiError(codes.SHUTTING_DOWN, str(e)) from None
    except QueueFull as e:
        raise ApiError(codes.QUEUE_FULL,
                       str(e), headers={"Retry-After": str(max(1, math.ceil(e.retry_after_s)))}) from None


# What a person reads of an answer the engine ended with an error, before the engine's own line;
# the status its cause deserves is the code's row (``ErrorCode.row``).
_EVENT_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.NON_FINITE_LOGITS: "the model produced non-finite logits for this request (check the adapter's "
                                 "weights and scale)",
    ErrorCode.SHUTTING_DOWN: "the server is shutting down",
    ErrorCode.SAMPLING_FAILED: "sampling the next token failed",
    ErrorCode.DETOKENIZE_FAILED: "turning the tokens into text failed",
    ErrorCode.INTERNAL_ERROR: "generation failed",
}


def _event_error(event: TokenEvent) -> ApiError:
    code = event.error_code or ErrorCode.INTERNAL_ERROR
    return ApiError(code.row, f"{_EVENT_MESSAGES[code]}: {event.error}")


def _events(choice: _Choice, label: str, metrics: ServerMetrics) -> Iterator[TokenEvent]:
    """Consume one answer's events, yielding each; fills ``choice`` and records metrics.

    Streaming responses run this after the view returned (outside the app context), so the
    metrics object is passed in rather than looked up."""
    req = choice.request
    for event in req.stream:
        if event.error is not None:
            raise _event_error(event)
        if event.token_id is not None:
            choice.token_ids.append(event.token_id)
        if event.logprob is not None:
            choice.logprobs.append(event.logprob)
        if event.prompt_logprobs is not None:
            choice.prompt_logprobs = event.prompt_logprobs
        choice.text += event.text
        if event.finish_reason is not None:
            choice.finish_reason = event.finish_reason
            choice.prompt_tokens, choice.completion_tokens = event.prompt_tokens, event.completion_tokens
        yield event
    stream = req.stream
    metrics.observe_generation(
        label,
        prompt_tokens=choice.prompt_tokens,
        completion_tokens=choice.completion_tokens,
        latency_s=(stream.finished_at or time.monotonic()) - req.submitted_at,
        ttft_s=None if stream.first_token_at is None else stream.first_token_at - req.submitted_at,
        finish_reason=choice.finish_reason,
    )


def _usage(choices: list[_Choice], n: int) -> dict[str, int]:
    """Token counts as OpenAI reports them: each prompt once, every answer's tokens."""
    prompt = sum(c.prompt_tokens for c in choices[::n])
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(chunks: Iterator[dict[str, Any]], choices: list[_Choice]) -> Response:
    """The event stream of ``chunks``. The client's connection is watched from the start (taken
    here, in the view, where the WSGI environ is at hand): a streamed answer still waiting in the
    queue writes nothing, so a failed write would notice a departed client only once it ran."""
    watcher = app_state()["disconnects"]
    gone = request.environ.get("waitress.client_disconnected")

    def generate() -> Iterator[str]:
        done = False
        try:
            with watcher.watch(gone, lambda: _cancel(choices)):
                for chunk in chunks:
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
                done = True
        except ApiError as e:
            yield f"data: {json.dumps(e.to_dict())}\n\n"
        finally:
            if not done:  # the client went away (or generation failed): stop decoding for it
                _cancel(choices)

    return Response(generate(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _want_usage(body: dict[str, Any]) -> bool:
    options = _field(body, "stream_options", dict, "an object", {})
    return bool(options.get("include_usage"))


@dataclass
class _Job:
    """A checked request whose answers are queued: what both endpoints share between parsing the
    prompt and shaping the response."""

    choices: list[_Choice]
    n: int
    stream: bool
    want_ids: bool
    want_usage: bool
    label: str
    metrics: ServerMetrics
    head: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def drain(self) -> None:
        """Wait for every answer, cancelling them all if one fails or the client goes away."""
        try:
            with app_state()["disconnects"].watch(request.environ.get("waitress.client_disconnected"),
                                                  lambda: _cancel(self.choices)):
                _drain(self.choices, self.label, self.metrics)
        except BaseException:
            _cancel(self.choices)
            raise

    def usage(self) -> dict[str, int]:
        return _usage(self.choices, self.n)


def _start(engine: Engine, body: dict[str, Any], adapter: Resolved, prompts: list[list[int]], n: int,
           *, default_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None = None,
           enforced: tuple[str, GrammarSpec] | None = None) -> _Job:
    """Read the sampling and response options both endpoints take, and queue the answers
    (``enforced``: a grammar another field asks for, named by that field)."""
    room = engine.context_length - max(len(p) for p in prompts) - adapter.virtual_tokens
    max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens"), default_tokens, room)
    params = _sampling(body, max_tokens=max_tokens, vocab=engine.vocab_size, logprobs=logprobs,
                       prompt_logprobs=prompt_logprobs)
    stream = _field(body, "stream", bool, "a boolean", False)
    want_ids = _field(body, "return_token_ids", bool, "a boolean", False)
    want_usage = _want_usage(body)
    choices = _submit(engine, adapter, prompts, params, n, requested_grammar(engine, body, enforced))
    return _Job(choices, n, stream, want_ids, want_usage, g.adapter_label, _metrics(),
                {"created": int(time.time()), "model": body["model"]})


# --- /v1/completions -----------------------------------------------------------------------------


def _check_text(text: str) -> None:
    """A prompt text (as the model reads it) refused before it is tokenized if too long to fit in any case."""
    _bounds().check_chars(len(text), "the prompt")


def _encode_text(tokenizer: Any, text: str, template: PromptTemplate | None, vocab: int) -> tuple[list[int], str]:
    """A completion prompt's (token ids, text as the model reads it), ``template`` applied."""
    encoded = encode_request_prompt(tokenizer, text, template, _check_text)
    return _check_ids(encoded.ids, vocab), encoded.text


def _completion_prompts(body: dict[str, Any], tokenizer: Any, vocab: int, n: int,
                        template: PromptTemplate | None) -> list[tuple[list[int], str | None]]:
    """The prompts as (token ids, text as sent or rendered by ``template``; ``None`` for token ids,
    decoded only if ``echo`` needs them); their count (times ``n``) is checked before any is tokenized."""
    prompt = body.get("prompt")
    limits = app_state()["limits"]
    if isinstance(prompt, str):
        prompt = [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            prompt = [prompt]  # one prompt of token ids
        if all(isinstance(p, str) for p in prompt):
            limits.check_generations(len(prompt), n)
            return [_encode_text(tokenizer, text, template, vocab) for text in prompt]
        if all(isinstance(p, list) for p in prompt):
            refuse_token_ids(template, body["model"])
            limits.check_generations(len(prompt), n)
            return [(_check_ids(list(p), vocab), None) for p in prompt]
    raise ApiError(codes.INVALID_TYPE, "'prompt' must be a string, a list of strings, or token ids")


def _top_k(body: dict[str, Any], key: str, most: int) -> int | None:
    value = _field(body, key, int, f"an integer between 0 and {most}", None)
    if value is not None and not 0 <= value <= most:
        raise ApiError(codes.INVALID_VALUE, f"'{key}' must be an integer between 0 and {most}, got {value}")
    return value


def _decoder(tokenizer: Any) -> Callable[[int], str]:
    return lambda token_id: tokenizer.decode([token_id])


def _begin(fields: frozenset[str]) -> tuple[Engine, dict[str, Any], Resolved, int]:
    """What both endpoints check first: the engine, the body (only ``fields`` allowed), the model, n."""
    engine = _engine()
    body = _body()
    _refuse_unsupported(body, fields)
    return engine, body, _resolve(engine, body), _n(body)


@bp.post("/completions")
def completions():
    engine, body, adapter, n = _begin(_COMPLETION_FIELDS)
    logprobs = _top_k(body, "logprobs", MAX_COMPLETION_LOGPROBS)
    echo = _field(body, "echo", bool, "a boolean", False)
    prompts = _completion_prompts(body, engine.tokenizer, engine.vocab_size, n, adapter.template())
    job = _start(engine, body, adapter, [ids for ids, _ in prompts], n, default_tokens=DEFAULT_COMPLETION_TOKENS,
                 logprobs=logprobs, prompt_logprobs=logprobs if echo else None)
    head = {"id": f"cmpl-{job.id}", "object": "text_completion", **job.head}
    decode, offsets = _decoder(engine.tokenizer), [0] * len(job.choices)

    def choice_of(i: int, c: _Choice, text: str, steps: list[tuple[int, TokenLogprob | None]],
                  first: bool) -> dict[str, Any]:
        """One choice (or one streamed piece of it); with ``echo`` its first piece starts with the prompt."""
        if echo and first:
            ids, prompt_text = prompts[i // n]
            text = (engine.tokenizer.decode(ids) if prompt_text is None else prompt_text) + text
            steps = [*zip(ids, c.prompt_logprobs or [None] * len(ids)), *steps]
        scores = None
        if logprobs is not None:
            scores = completion_logprobs(decode, steps, offsets[i])
            offsets[i] += sum(map(len, scores["tokens"]))
        return {"index": i, "text": text, "logprobs": scores, "finish_reason": c.finish_reason}

    if not job.stream:
        job.drain()
        return jsonify({**head, "choices": [
            {**choice_of(i, c, c.text, list(zip(c.token_ids, c.logprobs)), True),
             **({"token_ids": c.token_ids, "prompt_token_ids": prompts[i // n][0]} if job.want_ids else {})}
            for i, c in enumerate(job.choices)], "usage": job.usage()})

    return _stream(job, head, choice_of=lambda i, c, event, first: choice_of(
        i, c, event.text, [] if event.token_id is None else [(event.token_id, event.logprob)], first))


def _stream(job: _Job, head: dict[str, Any], *, choice_of: Callable[[int, _Choice, TokenEvent, bool], dict[str, Any]],
            opening: Callable[[int], dict[str, Any]] | None = None) -> Response:
    """The SSE response both endpoints stream: per choice an optional opening chunk, then one
    chunk per token event (``choice_of`` shapes it, told whether it is the choice's first; token
    ids added when asked), and a last usage chunk when asked."""

    def chunks() -> Iterator[dict[str, Any]]:
        for i, c in enumerate(job.choices):
            if opening is not None:
                yield {**head, "choices": [opening(i)]}
            for j, event in enumerate(_events(c, job.label, job.metrics)):
                choice = choice_of(i, c, event, j == 0)
                if job.want_ids:
                    choice["token_ids"] = [] if event.token_id is None else [event.token_id]
                yield {**head, "choices": [choice]}
        if job.want_usage:
            yield {**head, "choices": [], "usage": job.usage()}

    return _sse(chunks(), job.choices)


def _drain(choices: list[_Choice], label: str, metrics: ServerMetrics) -> None:
    """Wait for every choice to finish, recording its tokens as a stream would."""
    for c in choices:
        for _ in _events(c, label, metrics):
            pass


# --- /v1/chat/completions ------------------------------------------------------------------------


def _chat_prompt(body: dict[str, Any], tokenizer: Any, vocab: int, n: int, template: PromptTemplate | None,
                 tools: ToolRequest | None) -> list[int]:
    turns = conversation(body.get("messages"))
    app_state()["limits"].check_generations(1, n)
    _bounds().check_chars(conversation_chars(turns), "the conversation")  # before templating it
    chat_prompts = app_state()["chat_prompts"]
    encoded = encode_request_prompt(tokenizer, turns, template, _check_text,
                                    render_chat=lambda shaped: chat_prompts.render(shaped, tools))
    return _check_ids(encoded.ids, vocab)


def _chat_top_logprobs(body: dict[str, Any]) -> int | None:
    """Chat's ``logprobs: true`` with ``top_logprobs`` alternatives (0 when absent); ``None`` when not asked."""
    wanted = _field(body, "logprobs", bool, "a boolean", False)
    top = _top_k(body, "top_logprobs", MAX_LOGPROBS)
    if top is not None and not wanted:
        raise ApiError(codes.INVALID_VALUE, "'top_logprobs' needs 'logprobs': true")
    return (top or 0) if wanted else None


@bp.post("/chat/completions")
def chat_completions():
    engine, body, adapter, n = _begin(_CHAT_FIELDS)
    top_logprobs = _chat_top_logprobs(body)
    tools = requested_tools(engine, body)
    prompt = _chat_prompt(body, engine.tokenizer, engine.vocab_size, n, adapter.template(), tools)
    spec = None if tools is None else tools.enforced()
    job = _start(engine, body, adapter, [prompt], n, default_tokens=None, logprobs=top_logprobs,
                 enforced=None if spec is None else ("tool_choice", spec))
    head = {"id": f"chatcmpl-{job.id}", **job.head}
    decode = _decoder(engine.tokenizer)

    def scores(found: list[TokenLogprob]) -> dict[str, Any] | None:
        return None if top_logprobs is None else chat_logprobs(decode, found)

    def choice(i: int, c: _Choice) -> dict[str, Any]:
        message, finish_reason = answer_message(c.text, c.finish_reason, tools)
        return {"index": i, "message": message, "logprobs": scores(c.logprobs), "finish_reason": finish_reason,
                **({"token_ids": c.token_ids} if job.want_ids else {})}

    if not job.stream:
        job.drain()
        return jsonify({**head, "object": "chat.completion",
                        "choices": [choice(i, c) for i, c in enumerate(job.choices)], "usage": job.usage(),
                        **({"prompt_token_ids": prompt} if job.want_ids else {})})

    calls = [ToolCallStream(tools) for _ in job.choices] if tools is not None and tools.offered else None

    def chunk_choice(i: int, c: _Choice, event: TokenEvent) -> dict[str, Any]:
        """One token's chunk; with tools offered, content that may be a call is held to the end."""
        finish_reason = c.finish_reason
        if calls is None:
            delta = {"content": event.text} if event.text else {}
        else:
            delta, called = calls[i].step(event.text, finish_reason is not None)
            finish_reason = "tool_calls" if called else finish_reason
        return {"index": i, "delta": delta, "logprobs": scores([] if event.logprob is None else [event.logprob]),
                "finish_reason": finish_reason}

    return _stream(job, {**head, "object": "chat.completion.chunk"},
                   choice_of=lambda i, c, event, first: chunk_choice(i, c, event),
                   opening=lambda i: {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None})


# --- /v1/models and adapter loading ----------------------------------------------------------------


def _created(version: AdapterVersion) -> int:
    try:
        return int(datetime.fromisoformat(version.created.replace("Z", "+00:00")).timestamp())
    except (ValueError, AttributeError):
        return 0


@bp.get("/models")
def models():
    engine = _engine()
    g.adapter_label = "base"
    data = [{"id": engine.base_name, "object": "model", "created": 0, "owned_by": "adapterhub",
             "root": engine.base_name, "parent": None, "loaded": True, "quantization": engine.loaded.quantize}]
    loaded = engine.loaded_refs()
    for version in engine.registry.list(tag="latest"):  # one row per name, read from the index
        if not engine.servable(version):
            continue
        data.append({"id": version.name, "object": "model", "created": _created(version), "owned_by": "adapterhub",
                     "root": version.ref, "parent": engine.base_name, "adapter_type": version.adapter_type,
                     "version": version.version, "loaded": version.ref in loaded})
    data = with_served_names(data, app_state()["lora_names"], loaded)  # vLLM's served LoRA names
    return jsonify({"object": "list", "data": data})


def _named_adapter(engine: Engine) -> Resolved:
    body = _body()
    if "model" not in body and "adapter" in body:
        body = {**body, "model": body["adapter"]}
    adapter = _resolve(engine, body)
    if adapter.version is None:
        raise ApiError(codes.INVALID_VALUE, "the base model is always loaded; name an adapter")
    return adapter


@bp.post("/adapters/load")
def load_adapter():
    engine = _engine()
    adapter = _named_adapter(engine)
    version = adapter.version
    started = time.perf_counter()
    engine.load_adapter(adapter)
    return jsonify({"model": version.ref, "adapter_type": version.adapter_type, "loaded": True,
                    "seconds": round(time.perf_counter() - started, 6)})


@bp.post("/adapters/unload")
def unload_adapter():
    engine = _engine()
    version = _named_adapter(engine).version
    if not engine.unload_adapter(version.ref):
        raise ApiError(codes.NOT_LOADED, f"{version.ref} is not loaded")
    return jsonify({"model": version.ref, "loaded": False})
