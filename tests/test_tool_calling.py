"""Tool calling on /v1/chat/completions: ``tools``, ``tool_choice``, ``parallel_tool_calls``, tool histories.

A real server on a loopback port runs the real engine on the tiny base (fp32; a copy built with a
4096-token context, since JSON schemas are long in its byte-level tokens) with PEFT-saved LoRAs,
and the real ``openai`` client asks it. ``required`` and a named function are enforced by the
grammar, so even random weights answer with calls whose arguments the function's pydantic model
accepts; ``auto`` reads calls from free text, which a regex constraint writes here (the tiny base
never would). The tiny base's and SmolLM2's templates ignore ``tools``: they get the fallback
system message; a base whose template renders tools gets them through it.
"""

from __future__ import annotations

import json
import re
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from adapterhub.server.http.app import create_app
from adapterhub.server.http.tool_call_format import MAX_PARALLEL_CALLS
from adapterhub.server.http.wsgi import start_in_thread
from serving_helpers import openai_client, post_json, start_test_engine


class Weather(BaseModel):
    city: str = Field(max_length=8)
    days: int = Field(ge=1, le=9)


class Add(BaseModel):
    a: int = Field(ge=0, le=99)
    b: int = Field(ge=0, le=99)


class Person(BaseModel):
    name: str = Field(max_length=6)
    age: int = Field(ge=0, le=99)


class Booking(BaseModel):  # its schema has $defs and a $ref: each tool's schema is compiled on its own
    guest: Person
    nights: int = Field(ge=1, le=9)
    room: Literal["single", "double"]


FUNCTIONS = {"get_weather": Weather, "add": Add, "book_room": Booking}
TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name.replace('_', ' ')}.",
                                           "parameters": model.model_json_schema()}}
         for name, model in FUNCTIONS.items()]
_MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]


def _start(base, workdir):
    registry, engine, _ = start_test_engine(base, workdir)
    app = create_app(registry, engine=engine)
    return engine, app


@pytest.fixture(scope="module")
def long_base(tmp_path_factory):
    from adapterhub.tinybase import TinyBaseSpec, build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("bases") / "tiny-4k", TinyBaseSpec(max_position_embeddings=4096))


@pytest.fixture(scope="module")
def stack(long_base, tmp_path_factory):
    engine, app = _start(long_base, tmp_path_factory.mktemp("tools"))
    with start_in_thread(app, threads=8, stream_tokens=True) as server:
        yield engine, server
    engine.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai_client(stack[1].url)


def _chat(client, model, messages=_MESSAGES, **kwargs):
    return client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0,
                                          max_tokens=kwargs.pop("max_tokens", 150), **kwargs)


def _validated(calls):
    """(name, parsed arguments) of each call, each checked against its function's model."""
    return [(c.function.name, FUNCTIONS[c.function.name].model_validate_json(c.function.arguments)) for c in calls]


@pytest.mark.parametrize("model", ["base", "lora-qv"])
def test_required_returns_a_call_whose_arguments_validate(stack, client, model):
    name = stack[0].base_name if model == "base" else model
    for messages in (_MESSAGES, [{"role": "user", "content": "Add 2 and 3."}]):
        done = _chat(client, name, messages, tool_choice="required", parallel_tool_calls=False)
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        assert call.type == "function" and re.fullmatch("call_[0-9a-f]{24}", call.id)
        _validated([call])


def test_a_named_choice_calls_that_function(client):
    for name in FUNCTIONS:
        done = _chat(client, "lora-all", tool_choice={"type": "function", "function": {"name": name}})
        calls = done.choices[0].message.tool_calls
        assert done.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == [name]
        _validated(calls)


def test_parallel_tool_calls_gives_a_list(stack, client):
    """Random weights repeat calls: the grammar's bound on calls ends the answer."""
    for model in (stack[0].base_name, "lora-qv"):
        done = _chat(client, model, tool_choice="required", parallel_tool_calls=True, max_tokens=2400)
        calls = done.choices[0].message.tool_calls
        assert done.choices[0].finish_reason == "tool_calls", done.choices[0].message
        assert 1 <= len(calls) <= MAX_PARALLEL_CALLS
        assert len({c.id for c in calls}) == len(calls)
        _validated(calls)


def test_auto_reads_calls_from_the_answer_and_keeps_text_as_content(client):
    """Under ``auto`` the answer is free text read for calls; a regex makes the tiny base write one."""
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}</tool_call>'
    done = _chat(client, "lora-qv", extra_body={"guided_regex": re.escape("Let me see. " + call)})
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me see. "
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == \
        [("get_weather", {"city": "Oslo", "days": 2})]
    for text in ('<tool_call>{"name": "no_such", "arguments": {}}</tool_call>', call[:-3], "Sunny."):
        done = _chat(client, "lora-qv", extra_body={"guided_regex": re.escape(text)})
        assert done.choices[0].message.content == text and not done.choices[0].message.tool_calls
        assert done.choices[0].finish_reason == "stop"
    done = _chat(client, "lora-qv", parallel_tool_calls=False, max_tokens=300,
                 extra_body={"guided_regex": re.escape(call + call)})
    assert len(done.choices[0].message.tool_calls) == 1  # one call when parallel calls are off


def _streamed(client, model, **kwargs):
    content, calls, reasons = "", {}, []
    for chunk in _chat(client, model, stream=True, **kwargs):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or ():
            whole = calls.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
            whole["name"] += call.function.name or ""
            whole["arguments"] += call.function.arguments or ""
        reasons.append(chunk.choices[0].finish_reason)
    return content, [(c["name"], c["arguments"]) for _, c in sorted(calls.items())], reasons[-1]


@pytest.mark.parametrize("kwargs", [
    {"tool_choice": "required", "parallel_tool_calls": False},
    {"tool_choice": {"type": "function", "function": {"name": "book_room"}}},
    {"extra_body": {"guided_regex": re.escape(
        'Sure. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": {"a": 4, "b": 5}}</tool_call>')}},
    {"extra_body": {"guided_regex": "Sure. <tool_"}},  # a marker's start, held back, is content after all
])
def test_streamed_deltas_reassemble_the_tool_calls(client, kwargs):
    whole = _chat(client, "lora-all", **kwargs).choices[0]
    content, calls, reason = _streamed(client, "lora-all", **kwargs)
    assert reason == whole.finish_reason
    assert (content or None) == whole.message.content
    assert calls == [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or ()]


def test_a_history_with_a_tool_result_round_trips(stack, client):
    engine, _ = stack
    first = _chat(client, "lora-qv", tool_choice="required", parallel_tool_calls=False).choices[0].message
    call = first.tool_calls[0]
    history = [*_MESSAGES, first.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    done = _chat(client, "lora-qv", history, max_tokens=8, extra_body={"return_token_ids": True})
    assert done.choices[0].finish_reason in ("stop", "length", "tool_calls")
    prompt = engine.tokenizer.decode(done.model_extra["prompt_token_ids"])
    shown = json.dumps({"name": call.function.name, "arguments": json.loads(call.function.arguments)})
    assert f"<tool_call>{shown}</tool_call>" in prompt  # the past call, in the format the model was told
    assert "### user:\n<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    # Arguments sent back as an object (some clients do) and a message name are accepted too.
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]}
    status, doc = post_json(stack[1].url, "/v1/chat/completions", {
        "model": "lora-qv", "max_tokens": 4, "tools": TOOLS, "messages": [
            {"role": "user", "content": "Add 1 and 2.", "name": "ann"}, assistant,
            {"role": "tool", "tool_call_id": "c1", "content": "3"}]})
    assert status == 200, doc


def test_tool_choice_none_is_as_if_no_tools(client):
    def ask(**kwargs):
        done = client.chat.completions.create(model="lora-all", messages=_MESSAGES, max_tokens=12, temperature=0,
                                              extra_body={"return_token_ids": True}, **kwargs)
        return done.model_extra["prompt_token_ids"], done.choices[0].model_extra["token_ids"], done.choices[0]

    with_none, without = ask(tools=TOOLS, tool_choice="none"), ask()
    assert with_none[:2] == without[:2]
    assert with_none[2].message.tool_calls is None and with_none[2].finish_reason == without[2].finish_reason


def _tool(name="f", parameters=None, **function):
    return {"type": "function", "function": {"name": name, **function,
                                             **({"parameters": parameters} if parameters is not None else {})}}


_HUGE = {"type": "object", "properties": {f"p{i:05d}": {"type": "integer"} for i in range(4000)}}


@pytest.mark.parametrize("extra, code, named", [
    ({"tools": [_tool("add"), _tool("add")]}, "invalid_value", "defined twice"),
    ({"tools": [_tool("get weather")]}, "invalid_value", "tools[0].function.name"),
    ({"tools": [_tool("a" * 65)]}, "invalid_value", "tools[0].function.name"),
    ({"tools": [_tool("f")], "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "invalid_value", "tool_choice"),
    ({"tools": [_tool("f", {"type": "string"})]}, "invalid_value", "tools[0].function.parameters"),
    ({"tools": [_tool("f", {"type": "object", "properties": {"a": {"type": "nope"}}})]},
     "invalid_grammar", "tools[0].function.parameters"),
    ({"tools": [_tool("f", _HUGE)]}, "grammar_too_large", "tools"),
    ({"tools": [_tool(f"f{i}") for i in range(129)]}, "invalid_value", "tools"),
    ({"tools": {"f": {}}}, "invalid_type", "tools"),
    ({"tools": [{"type": "retrieval"}]}, "invalid_value", "tools[0]"),
    ({"tools": [_tool("f", strict=True)]}, "unsupported_field", "tools[0].function.strict"),
    ({"tools": [_tool("f")], "tool_choice": "sometimes"}, "invalid_value", "tool_choice"),
    ({"tool_choice": "required"}, "invalid_value", "tool_choice"),
    ({"tools": [_tool("f")], "parallel_tool_calls": "yes"}, "invalid_type", "parallel_tool_calls"),
    ({"tools": [_tool("f")], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "invalid_value", "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}]},
     "invalid_value", "messages[1].tool_call_id"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "invalid_value", "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "x", "tool_call_id": "c"}]}, "unsupported_field", "messages[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "invalid_value", "tool_call_id"),
])
def test_every_refusal_is_a_one_line_400(stack, extra, code, named):
    status, doc = post_json(stack[1].url, "/v1/chat/completions",
                            {"model": "lora-qv", "max_tokens": 4, "messages": _MESSAGES, **extra})
    assert status == 400, doc
    message = doc["error"]["message"]
    assert doc["error"]["code"] == code and named in message and "\n" not in message and len(message) < 500, doc


# --- a template that renders tools ------------------------------------------------------------------

_TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n{% endif %}"
    "{% for m in messages %}### {{ m.role }}:\n"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>"
    "{% endfor %}{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)


def test_a_template_that_renders_tools_gets_them_as_they_are(long_base, tmp_path):
    """The definitions and the history go to the base's template as transformers passes them
    (arguments as objects), and the fallback instructions stay out."""
    import shutil

    from openai import OpenAI
    from transformers import AutoTokenizer

    base = tmp_path / "tool-template-base"
    shutil.copytree(long_base, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = _TOOL_TEMPLATE
    tokenizer.save_pretrained(base)
    engine, app = _start(base, tmp_path / "work")
    history = [*_MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    try:
        with start_in_thread(app, threads=4) as server:
            client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            done = _chat(client, engine.base_name, history, max_tokens=4, extra_body={"return_token_ids": True})
            forced = _chat(client, engine.base_name, tool_choice="required", parallel_tool_calls=False)
    finally:
        engine.stop()
    want = tokenizer.apply_chat_template(
        [{**history[0]}, {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
         history[2]], tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert done.model_extra["prompt_token_ids"] == tokenizer(want, add_special_tokens=False)["input_ids"]
    assert "You may call" not in want and "<call>get_weather {\"city\": \"Oslo\"}</call>" in want
    _validated(forced.choices[0].message.tool_calls)


# --- the real model ---------------------------------------------------------------------------------


def test_required_yields_valid_arguments_on_smollm2(smollm2_base, tmp_path):
    from openai import OpenAI

    from adapterhub.registry import LocalRegistry
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model

    registry = LocalRegistry(tmp_path / "registry")
    engine = create_engine(load_base_model(str(smollm2_base), quantize="none", device="cpu"), registry).start()
    try:
        with start_in_thread(create_app(registry, engine=engine), threads=4) as server:
            client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            done = _chat(client, engine.base_name, tool_choice="required", max_tokens=120)
            named = _chat(client, engine.base_name, [{"role": "user", "content": "Add 2 and 3."}], max_tokens=60,
                          tool_choice={"type": "function", "function": {"name": "add"}})
    finally:
        engine.stop()
    assert done.choices[0].finish_reason == "tool_calls", done.choices[0].message
    _validated(done.choices[0].message.tool_calls)
    assert [name for name, _ in _validated(named.choices[0].message.tool_calls)] == ["add"]
