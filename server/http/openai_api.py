"""The OpenAI-compatible API under ``/v1``: completions, chat completions, models, adapter loading.

``model`` names either the base (its name as served) or an adapter reference (``name``,
``name:tag``, ``name@3``); the engine resolves it and checks it against the base before anything is
generated, so an unknown adapter is a 404 and one made for another base a 409. Every field is
checked here, in the HTTP thread, and reported as a 400 naming the field; the engine only ever sees
valid requests. ``stream: true`` answers with server-sent events, one per generated token.

One extension beyond OpenAI's schema: ``return_token_ids: true`` adds each choice's generated
``token_ids`` (the exactness tests compare them with PEFT's).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator

from flask import Blueprint, Response, g, jsonify, request

from adapterhub.errors import IncompatibleBase
from adapterhub.server.engine.adapters.picker import check_compatible
from adapterhub.server.engine.engine import ContextTooLong, EngineStopped
from adapterhub.server.engine.request import GenerationRequest, SamplingParams

from .errors import ApiError
from .health import ServerMetrics
from .state import app_state

if TYPE_CHECKING:
    from adapterhub.registry import AdapterVersion
    from adapterhub.server.engine.engine import Engine

__all__ = ["bp"]

bp = Blueprint("openai", __name__, url_prefix="/v1")

MAX_CHOICES = 16
MAX_STOP = 4
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
_MISSING = object()
_ROLES = ("system", "user", "assistant", "tool", "developer")


# --- plumbing ------------------------------------------------------------------------------------


def _engine() -> Engine:
    engine = app_state().get("engine")
    if engine is None:
        raise ApiError(503, "this server holds no model (start it with `adapterhub serve`)", code="no_model")
    return engine


def _metrics() -> ServerMetrics:
    return app_state().setdefault("metrics", ServerMetrics())


@bp.after_request
def _count(response: Response) -> Response:
    _metrics().count_request(g.get("adapter_label", "unknown"), request.endpoint or "-", response.status_code)
    return response


def _body() -> dict[str, Any]:
    data = request.get_json(force=True, silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return data


def _field(body: dict[str, Any], key: str, types: type | tuple[type, ...], what: str, default: Any = _MISSING) -> Any:
    """``body[key]`` checked against ``types`` (bools are never numbers); ``default`` when absent or null."""
    value = body.get(key)
    if value is None:
        if default is _MISSING:
            raise ApiError(400, f"'{key}' is required", code="missing_field")
        return default
    types = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise ApiError(400, f"'{key}' must be {what}", code="invalid_type")
    return value


def _resolve(engine: Engine, body: dict[str, Any]) -> AdapterVersion | None:
    model = _field(body, "model", str, "a string (an adapter reference or the base model's name)")
    version = engine.resolve(model)
    g.adapter_label = "base" if version is None else version.ref
    return version


def _sampling(body: dict[str, Any], *, max_tokens: int) -> SamplingParams:
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP:
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings", code="invalid_type")
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_field(body, "temperature", (int, float), "a number", 1.0),
            top_p=_field(body, "top_p", (int, float), "a number", 1.0),
            seed=_field(body, "seed", int, "an integer", None),
            stop=tuple(s for s in stop if s),
        )
    except ValueError as e:
        raise ApiError(400, str(e), code="invalid_value") from None


def _max_tokens(body: dict[str, Any], keys: tuple[str, ...], default: int | None, room: int) -> int:
    """The asked ``max_tokens`` (checked against the context later), or the default capped by ``room``."""
    for key in keys:
        value = _field(body, key, int, "an integer", None)
        if value is not None:
            if value < 1:
                raise ApiError(400, f"'{key}' must be at least 1, got {value}", code="invalid_value")
            return value
    return max(1, min(default or room, room))


def _n(body: dict[str, Any]) -> int:
    n = _field(body, "n", int, "an integer", 1)
    if not 1 <= n <= MAX_CHOICES:
        raise ApiError(400, f"'n' must be between 1 and {MAX_CHOICES}, got {n}", code="invalid_value")
    return n


def _check_ids(ids: list[int], vocab: int) -> list[int]:
    if not ids:
        raise ApiError(400, "the prompt is empty", code="invalid_value")
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
        raise ApiError(400, f"token ids must be integers in [0, {vocab})", code="invalid_value")
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


def _submit(engine: Engine, version: AdapterVersion | None, prompts: list[list[int]], params: SamplingParams,
            n: int) -> list[_Choice]:
    """Queue ``n`` answers per prompt; all or nothing (a failure cancels those already queued)."""
    for ids in prompts:
        try:
            engine.check_fits(len(ids), version, params.max_tokens)
        except ContextTooLong as e:
            raise ApiError(400, str(e), code="context_length_exceeded") from None
    choices: list[_Choice] = []
    try:
        for ids in prompts:
            for j in range(n):
                p = params if params.seed is None else replace(params, seed=params.seed + j)
                choices.append(_Choice(engine.submit(ids, p, version)))
    except EngineStopped as e:
        for c in choices:
            c.request.stream.cancel()
        raise ApiError(503, str(e), code="shutting_down") from None
    except BaseException:
        for c in choices:
            c.request.stream.cancel()
        raise
    return choices


def _events(choice: _Choice, label: str, metrics: ServerMetrics) -> Iterator[tuple[str, int | None]]:
    """Consume one answer's events, yielding (text, token id); fills ``choice`` and records metrics.

    Streaming responses run this after the view returned (outside the app context), so the
    metrics object is passed in rather than looked up."""
    req = choice.request
    for event in req.stream:
        if event.error is not None:
            raise ApiError(500, f"generation failed: {event.error}", code="generation_failed")
        if event.token_id is not None:
            choice.token_ids.append(event.token_id)
        choice.text += event.text
        if event.finish_reason is not None:
            choice.finish_reason = event.finish_reason
            choice.prompt_tokens, choice.completion_tokens = event.prompt_tokens, event.completion_tokens
        yield event.text, event.token_id
    stream = req.stream
    metrics.observe_generation(
        label,
        prompt_tokens=choice.prompt_tokens,
        completion_tokens=choice.completion_tokens,
        latency_s=(stream.finished_at or time.monotonic()) - req.submitted_at,
        ttft_s=None if stream.first_token_at is None else stream.first_token_at - req.submitted_at,
    )


def _usage(choices: list[_Choice], n: int) -> dict[str, int]:
    """Token counts as OpenAI reports them: each prompt once, every answer's tokens."""
    prompt = sum(c.prompt_tokens for c in choices[::n])
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(chunks: Iterator[dict[str, Any]], choices: list[_Choice]) -> Response:
    def generate() -> Iterator[str]:
        done = False
        try:
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
            done = True
        except ApiError as e:
            yield f"data: {json.dumps(e.to_dict())}\n\n"
        finally:
            if not done:  # the client went away (or generation failed): stop decoding for it
                for c in choices:
                    c.request.stream.cancel()

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
        _drain(self.choices, self.label, self.metrics)

    def usage(self) -> dict[str, int]:
        return _usage(self.choices, self.n)


def _start(engine: Engine, body: dict[str, Any], version: AdapterVersion | None, prompts: list[list[int]], *,
           token_keys: tuple[str, ...], default_tokens: int | None) -> _Job:
    """Read the sampling and response options both endpoints take, and queue the answers."""
    room = engine.context_length - max(len(p) for p in prompts) - engine.virtual_tokens(version)
    params = _sampling(body, max_tokens=_max_tokens(body, token_keys, default_tokens, room))
    n = _n(body)
    stream = _field(body, "stream", bool, "a boolean", False)
    want_ids = _field(body, "return_token_ids", bool, "a boolean", False)
    want_usage = _want_usage(body)
    choices = _submit(engine, version, prompts, params, n)
    return _Job(choices, n, stream, want_ids, want_usage, g.adapter_label, _metrics(),
                {"created": int(time.time()), "model": body["model"]})


# --- /v1/completions -----------------------------------------------------------------------------


def _completion_prompts(body: dict[str, Any], tokenizer: Any, vocab: int) -> list[list[int]]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [_check_ids(tokenizer.encode(prompt), vocab)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [_check_ids(list(prompt), vocab)]
        if all(isinstance(p, str) for p in prompt):
            return [_check_ids(tokenizer.encode(p), vocab) for p in prompt]
        if all(isinstance(p, list) for p in prompt):
            return [_check_ids(list(p), vocab) for p in prompt]
    raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids", code="invalid_type")


@bp.post("/completions")
def completions():
    engine = _engine()
    body = _body()
    version = _resolve(engine, body)
    prompts = _completion_prompts(body, engine.tokenizer, engine.vocab_size)
    job = _start(engine, body, version, prompts, token_keys=("max_tokens",), default_tokens=DEFAULT_COMPLETION_TOKENS)
    head = {"id": f"cmpl-{job.id}", "object": "text_completion", **job.head}

    if not job.stream:
        job.drain()
        return jsonify({**head, "choices": [
            {"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason,
             **({"token_ids": c.token_ids} if job.want_ids else {})}
            for i, c in enumerate(job.choices)], "usage": job.usage()})

    return _stream(job, head, choice_of=lambda i, c, text: {"index": i, "text": text, "logprobs": None,
                                                            "finish_reason": c.finish_reason})


def _stream(job: _Job, head: dict[str, Any], *, choice_of: Callable[[int, _Choice, str], dict[str, Any]],
            opening: Callable[[int], dict[str, Any]] | None = None) -> Response:
    """The SSE response both endpoints stream: per choice an optional opening chunk, then one
    chunk per token event (``choice_of`` shapes it; token ids added when asked), and a last
    usage chunk when asked."""

    def chunks() -> Iterator[dict[str, Any]]:
        for i, c in enumerate(job.choices):
            if opening is not None:
                yield {**head, "choices": [opening(i)]}
            for text, token in _events(c, job.label, job.metrics):
                choice = choice_of(i, c, text)
                if job.want_ids:
                    choice["token_ids"] = [] if token is None else [token]
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


def _chat_prompt(body: dict[str, Any], tokenizer: Any, vocab: int) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", code="invalid_type")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise ApiError(400, f"messages[{i}] needs a role among {', '.join(_ROLES)}", code="invalid_value")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content parts must be text parts", code="invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", code="invalid_type")
        clean.append({"role": m["role"], "content": content})
    if getattr(tokenizer, "chat_template", None) is None:
        raise ApiError(400, "the base model has no chat template; use /v1/completions", code="no_chat_template")
    text = tokenizer.apply_chat_template(clean, add_generation_prompt=True, tokenize=False)
    return _check_ids(tokenizer.encode(text, add_special_tokens=False), vocab)


@bp.post("/chat/completions")
def chat_completions():
    engine = _engine()
    body = _body()
    version = _resolve(engine, body)
    prompt = _chat_prompt(body, engine.tokenizer, engine.vocab_size)
    job = _start(engine, body, version, [prompt], token_keys=("max_completion_tokens", "max_tokens"),
                 default_tokens=None)
    head = {"id": f"chatcmpl-{job.id}", **job.head}

    if not job.stream:
        job.drain()
        return jsonify({**head, "object": "chat.completion", "choices": [
            {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
             "finish_reason": c.finish_reason, **({"token_ids": c.token_ids} if job.want_ids else {})}
            for i, c in enumerate(job.choices)], "usage": job.usage()})

    return _stream(job, {**head, "object": "chat.completion.chunk"},
                   choice_of=lambda i, c, text: {"index": i, "delta": {"content": text} if text else {},
                                                 "logprobs": None, "finish_reason": c.finish_reason},
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
    latest: dict[str, AdapterVersion] = {}
    for version in engine.registry.list():
        if version.adapter_type in ("lora", "prompt_tuning") and (
                version.name not in latest or "latest" in version.tags):
            latest[version.name] = version
    for name, version in sorted(latest.items()):
        try:
            check_compatible(version, engine.loaded.info)
        except IncompatibleBase:
            continue
        data.append({"id": name, "object": "model", "created": _created(version), "owned_by": "adapterhub",
                     "root": version.ref, "parent": engine.base_name, "adapter_type": version.adapter_type,
                     "version": version.version, "loaded": engine.is_loaded(version.ref)})
    return jsonify({"object": "list", "data": data})


def _adapter_version(engine: Engine) -> AdapterVersion:
    body = _body()
    if "model" not in body and "adapter" in body:
        body = {**body, "model": body["adapter"]}
    version = _resolve(engine, body)
    if version is None:
        raise ApiError(400, "the base model is always loaded; name an adapter", code="invalid_value")
    return version


@bp.post("/adapters/load")
def load_adapter():
    engine = _engine()
    version = _adapter_version(engine)
    started = time.perf_counter()
    engine.load_adapter(version)
    return jsonify({"model": version.ref, "adapter_type": version.adapter_type, "loaded": True,
                    "seconds": round(time.perf_counter() - started, 6)})


@bp.post("/adapters/unload")
def unload_adapter():
    engine = _engine()
    version = _adapter_version(engine)
    if not engine.unload_adapter(version.ref):
        raise ApiError(404, f"{version.ref} is not loaded", code="not_loaded")
    return jsonify({"model": version.ref, "loaded": False})
