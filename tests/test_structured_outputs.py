"""Structured outputs: JSON schemas, JSON objects, regexes, choices and grammars, per row of the batch.

A real server on a loopback port runs the real engine on the tiny base (fp32), with PEFT-saved
LoRAs, and the real ``openai`` client asks it: ``parse`` with pydantic models must come back
parsed, on the base and on a LoRA; constrained and free requests share one batch, and a free
row's tokens are the ones it gets alone; bad constraints are one-line 400s.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapterhub.server.http.app import create_app
from adapterhub.server.http.wsgi import start_in_thread
from serving_helpers import held_engine, openai_client, post_json, start_test_engine
from structured_models import MODELS

_MESSAGES = [{"role": "user", "content": "Answer in JSON."}]


@pytest.fixture(scope="module")
def stack(tiny_base, tmp_path_factory):
    registry, engine, _ = start_test_engine(tiny_base, tmp_path_factory.mktemp("structured"))
    app = create_app(registry, engine=engine)
    with start_in_thread(app, threads=16, stream_tokens=True) as server:
        yield engine, server
    engine.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai_client(stack[1].url)


def _chat(client, model, **kwargs):
    return client.chat.completions.create(model=model, messages=_MESSAGES, **kwargs)


@pytest.mark.parametrize("model", ["base", "lora-qv"])
def test_parse_returns_pydantic_objects_for_many_schemas(stack, client, model):
    """Every pydantic model comes back parsed (the client validates it) with finish reason stop;
    the requests run together, so constrained rows also share batches with each other."""
    engine, _ = stack
    name = engine.base_name if model == "base" else model

    def parse(schema):
        done = client.beta.chat.completions.parse(model=name, messages=_MESSAGES, response_format=schema,
                                                  max_tokens=400, temperature=0)
        return schema, done.choices[0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(parse, MODELS))
    assert len(answers) >= 20
    for schema, choice in answers:
        assert choice.finish_reason == "stop", (schema.__name__, choice.message.content)
        assert isinstance(choice.message.parsed, schema)
        assert schema.model_validate_json(choice.message.content) == choice.message.parsed
        assert all(ord(ch) >= 0x20 for ch in choice.message.content)  # JSON has no raw control characters


def test_json_object_mode_yields_json_objects(stack, client):
    engine, _ = stack
    for model in (engine.base_name, "lora-all", "prompt-4"):
        done = _chat(client, model, response_format={"type": "json_object"}, max_tokens=300, temperature=0)
        assert done.choices[0].finish_reason == "stop", done.choices[0].message.content
        assert isinstance(json.loads(done.choices[0].message.content), dict)
    # Keys are unbounded strings: with random weights some prompts open one that runs past any
    # max_tokens (valid so far, finish reason length), so this prompt is one whose answer closes.
    done = client.completions.create(model="lora-qv", prompt="Hello", max_tokens=300, temperature=0,
                                     extra_body={"structured_outputs": {"json_object": True}})
    assert done.choices[0].finish_reason == "stop" and isinstance(json.loads(done.choices[0].text), dict)


def test_regex_choice_and_grammar(stack, client):
    done = _chat(client, "lora-qv", max_tokens=40, temperature=1.0, seed=3,
                 extra_body={"guided_regex": r"[A-Z]{2}-[0-9]{3}"})
    assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", done.choices[0].message.content), done.choices[0].message.content
    choices = ["yes", "no", 'say "maybe"']
    for extra in ({"guided_choice": choices}, {"structured_outputs": {"choice": choices}}):
        done = client.completions.create(model="lora-all", prompt="Well?", max_tokens=20, temperature=1.0, seed=5,
                                         n=3, extra_body=extra)
        assert all(c.text in choices and c.finish_reason == "stop" for c in done.choices), done.choices
    grammar = 'root ::= "(" digit ("+" digit)? ("+" digit)? ")"\ndigit ::= [0-9]'
    done = _chat(client, stack[0].base_name, max_tokens=60, temperature=0, extra_body={"guided_grammar": grammar})
    assert re.fullmatch(r"\([0-9](\+[0-9]){0,2}\)", done.choices[0].message.content), done.choices[0].message.content


def test_penalties_and_logit_bias_compose_with_the_mask(client):
    """A bias of +100 on a token the grammar forbids (``x``) cannot get it chosen: the mask is last."""
    done = _chat(client, "lora-qv", max_tokens=60, temperature=0, logit_bias={str(ord("x")): 100},
                 presence_penalty=1.5, frequency_penalty=1.0, extra_body={"guided_regex": "[0-9]{4}"})
    assert re.fullmatch("[0-9]{4}", done.choices[0].message.content)
    free = _chat(client, "lora-qv", max_tokens=4, temperature=0, logit_bias={str(ord("x")): 100})
    assert free.choices[0].message.content == "xxxx"  # the same bias on a free row does what it says


def test_streamed_deltas_reassemble_the_answer(client):
    schema = MODELS[3]  # nested objects
    format_ = {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()}}
    whole = _chat(client, "lora-all", response_format=format_, max_tokens=300, temperature=0)
    parts, reasons = [], []
    for chunk in _chat(client, "lora-all", response_format=format_, max_tokens=300, temperature=0, stream=True):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)
    assert "".join(parts) == whole.choices[0].message.content
    assert reasons[-1] == whole.choices[0].finish_reason == "stop"
    schema.model_validate_json(whole.choices[0].message.content)


def test_mixed_batch_keeps_free_rows_exact(stack, client):
    """Eight requests, constrained and free, over the base and LoRAs, admitted in one prefill and
    decoded as one batch: each free row's greedy tokens are those it gets alone, and each
    constrained row's answer is valid."""
    engine, _ = stack
    base = engine.base_name
    schema = {"type": "json_schema", "json_schema": {"name": "Settings", "schema": MODELS[18].model_json_schema()}}
    cases = [
        (base, None), ("lora-qv", None), ("lora-all", None), (base, None),
        (base, {"response_format": schema}), ("lora-qv", {"response_format": {"type": "json_object"}}),
        ("lora-all", {"guided_regex": "[a-f]{3,9}"}), (base, {"guided_choice": ["left", "right"]}),
    ]

    def ask(case):
        model, constraint = case
        done = _chat(client, model, max_tokens=160, temperature=0,
                     extra_body={"return_token_ids": True, **(constraint or {})})
        return done.choices[0]

    alone = [ask(case) for case in cases if case[1] is None]
    before = dict(engine.stats.batch_sizes)
    with ThreadPoolExecutor(len(cases)) as pool:
        with held_engine(engine):
            futures = [pool.submit(ask, case) for case in cases]
            deadline = time.monotonic() + 60
            while engine.queued < len(cases) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert engine.queued == len(cases)
        together = [f.result() for f in futures]
    grew = {size for size, count in engine.stats.batch_sizes.items() if count > before.get(size, 0)}
    assert max(grew) == len(cases)  # they really were decoded as one batch
    free = [c for c, case in zip(together, cases) if case[1] is None]
    assert [c.model_extra["token_ids"] for c in free] == [c.model_extra["token_ids"] for c in alone]
    constrained = [c.message.content for c, case in zip(together, cases) if case[1] is not None]
    MODELS[18].model_validate_json(constrained[0])
    assert isinstance(json.loads(constrained[1]), dict)
    assert re.fullmatch("[a-f]{3,9}", constrained[2]) and constrained[3] in ("left", "right")


def test_max_tokens_inside_the_structure_is_length(client):
    from openai import LengthFinishReasonError

    format_ = {"type": "json_schema", "json_schema": {"name": "Settings", "schema": MODELS[18].model_json_schema()}}
    done = _chat(client, "lora-qv", max_tokens=5, temperature=0, response_format=format_)
    assert done.choices[0].finish_reason == "length" and done.choices[0].message.content == '{"a":'[:5]
    with pytest.raises(LengthFinishReasonError):
        client.beta.chat.completions.parse(model="lora-qv", messages=_MESSAGES, response_format=MODELS[18],
                                           max_tokens=5, temperature=0)


def _huge_schema() -> dict:
    return {"type": "object", "properties": {f"p{i:05d}": {"type": "integer"} for i in range(4000)}}


@pytest.mark.parametrize("extra, code, named", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
     "invalid_grammar", "response_format"),
    ({"guided_json": '{"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}'},
     "invalid_grammar", "guided_json"),
    ({"guided_regex": "([a-z]"}, "invalid_grammar", "guided_regex"),
    ({"structured_outputs": {"grammar": "root ::= "}}, "invalid_grammar", "structured_outputs.grammar"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": _huge_schema()}}},
     "grammar_too_large", "response_format"),
    ({"guided_choice": ["a" * 70_000]}, "grammar_too_large", "guided_choice"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "invalid_value", "guided_regex"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "invalid_value", "structured_outputs.choice"),
    ({"response_format": {"type": "xml"}}, "invalid_value", "response_format"),
    ({"response_format": {"type": "json_schema"}}, "invalid_value", "response_format"),
    ({"guided_json": "{not json"}, "invalid_value", "guided_json"),
    ({"guided_choice": "yes"}, "invalid_type", "guided_choice"),
    ({"structured_outputs": {"structural_tag": "x"}}, "unsupported_field", "structured_outputs.structural_tag"),
    ({"guided_decoding_backend": "outlines"}, "unsupported_field", "guided_decoding_backend"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_bad_constraints_are_one_line_400s(stack, path, extra, code, named):
    _, server = stack
    prompt = {"messages": _MESSAGES} if "chat" in path else {"prompt": "x"}
    status, doc = post_json(server.url, path, {"model": "lora-qv", "max_tokens": 8, **prompt, **extra})
    assert status == 400, doc
    message = doc["error"]["message"]
    assert doc["error"]["code"] == code and named in message and "\n" not in message and len(message) < 500, doc


def test_the_grammar_cache_keeps_the_most_recently_used(tiny_base):
    from transformers import AutoTokenizer

    from adapterhub.server.engine.structured.grammar_cache import GrammarCache
    from adapterhub.server.engine.structured.spec import GrammarInvalid, GrammarSpec

    cache = GrammarCache(AutoTokenizer.from_pretrained(tiny_base), 259, [258], max_entries=2)
    a, b, c = (GrammarSpec.regex(p) for p in ("a+", "b+", "c+"))
    assert cache.get(a) is cache.get(a) and cache.compiled == 1
    cache.get(b)
    cache.get(a)  # a is now the most recently used
    cache.get(c)
    assert len(cache) == 2 and cache.compiled == 3
    cache.get(a)
    assert cache.compiled == 3  # kept; b was evicted
    cache.get(b)
    assert cache.compiled == 4
    with pytest.raises(GrammarInvalid, match="^the regex does not compile: "):
        cache.get(GrammarSpec.regex("a{"))


def test_a_schema_sent_again_is_not_compiled_again(stack, client):
    """Identical schemas share one compilation, and so do identical failures (a client repeating a
    bad schema costs a lookup)."""
    engine, _ = stack
    format_ = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {f"k{i}": {"type": "integer", "minimum": 0, "maximum": i + 1}
                                         for i in range(300)}}}}
    bad = {"model": engine.base_name, "messages": _MESSAGES, "guided_regex": "(x"}
    _chat(client, engine.base_name, response_format=format_, max_tokens=1)
    assert post_json(stack[1].url, "/v1/chat/completions", bad)[0] == 400
    compiled = engine.grammars.compiled
    _chat(client, "lora-qv", response_format=format_, max_tokens=1)
    assert post_json(stack[1].url, "/v1/chat/completions", bad)[0] == 400
    assert engine.grammars.compiled == compiled
