"""The OpenAI-compatible HTTP API: exact answers, the real ``openai`` client, streaming, errors, metrics.

The app runs the real engine on the tiny base (fp32); the client tests talk to a real waitress
server on a loopback port.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapterhub.registry import LocalRegistry
from adapterhub.tinybase import TinyBaseSpec, build_tiny_base
from adapterhub.server.http.app import create_app
from adapterhub.server.engine.model_loader import load_base_model
from adapterhub.server.http.wsgi import start_in_thread
from serving_helpers import peft_greedy, start_test_engine


@pytest.fixture(scope="module")
def stack(tiny_base, tmp_path_factory):
    registry, engine, folders = start_test_engine(tiny_base, tmp_path_factory.mktemp("api"))
    app = create_app(registry, engine=engine)
    with start_in_thread(app, threads=8, stream_tokens=True) as server:  # as `adapterhub serve` runs it
        yield app, engine, folders, server
    engine.stop()


@pytest.fixture
def client(stack):
    return stack[0].test_client()


def _post(client, path, body):
    resp = client.post(path, data=json.dumps(body), content_type="application/json")
    return resp.status_code, resp.get_json()


def test_completions_are_peft_exact_in_a_mixed_batch(stack, tiny_base):
    app, engine, folders, server = stack
    cases = [(engine.base_name, "Hello world", 20), ("lora-qv", "Hello world", 20), ("lora-all@1", "abc", 15),
             ("prompt-4:latest", "The cat sat", 18), ("prompt-7", "Q", 10)]

    def ask(case):
        model, prompt, n = case
        with app.test_client() as c:
            return _post(c, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n,
                                                 "temperature": 0, "return_token_ids": True})

    with ThreadPoolExecutor(len(cases)) as pool:  # concurrent: they share decode steps
        answers = list(pool.map(ask, cases))
    for (model, prompt, n), (status, doc) in zip(cases, answers):
        assert status == 200, doc
        ids = engine.tokenizer.encode(prompt)
        name = model.split("@")[0].split(":")[0]
        want = peft_greedy(tiny_base, folders.get(name), ids, n)
        choice = doc["choices"][0]
        assert choice["token_ids"] == want, model
        assert choice["text"] == engine.tokenizer.decode(want, skip_special_tokens=True)
        assert doc["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(want),
                                "total_tokens": len(ids) + len(want)}
        assert choice["finish_reason"] == ("length" if len(want) == n else "stop")


def test_short_load_many_clients_over_every_adapter_kind(stack, tiny_base):
    """The unit-test version of bench/serve_load.py: 10 clients x 3 requests over HTTP, more clients
    than batch rows, LoRA, soft prompts and the base interleaved: no errors, every answer exact."""
    _, engine, folders, server = stack
    models = ["lora-qv", "prompt-4", "lora-all", "prompt-7", engine.base_name]

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        out = []
        for i in range(3):
            model, prompt, n = models[(c + i) % len(models)], f"client {c} asks {i}", 4 + (c * 7 + i * 5) % 20
            conn.request("POST", "/v1/completions", json.dumps(
                {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "return_token_ids": True}),
                {"Content-Type": "application/json"})
            resp = conn.getresponse()
            out.append((model, prompt, n, resp.status, json.loads(resp.read())))
        conn.close()
        return out

    with ThreadPoolExecutor(10) as pool:
        answers = [a for batch in pool.map(client, range(10)) for a in batch]
    assert len(answers) == 30 and all(status == 200 for _, _, _, status, _ in answers)
    for model, prompt, n, _, doc in answers:
        ids = engine.tokenizer.encode(prompt)
        assert doc["choices"][0]["token_ids"] == peft_greedy(tiny_base, folders.get(model), ids, n), model


def test_chat_completion_uses_the_chat_template(stack, client, tiny_base):
    _, engine, folders, _ = stack
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    status, doc = _post(client, "/v1/chat/completions", {"model": "lora-all", "messages": messages,
                                                          "max_tokens": 12, "temperature": 0,
                                                          "return_token_ids": True})
    assert status == 200, doc
    text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    assert doc["choices"][0]["token_ids"] == peft_greedy(tiny_base, folders["lora-all"], ids, 12)
    assert doc["object"] == "chat.completion" and doc["choices"][0]["message"]["role"] == "assistant"
    assert doc["usage"]["prompt_tokens"] == len(ids)


def test_n_choices_and_seeded_sampling(client):
    body = {"model": "prompt-4", "prompt": "roll", "max_tokens": 8, "temperature": 1.0, "seed": 7, "n": 3}
    s1, d1 = _post(client, "/v1/completions", body)
    s2, d2 = _post(client, "/v1/completions", body)
    assert s1 == s2 == 200
    assert [c["index"] for c in d1["choices"]] == [0, 1, 2]
    assert [c["text"] for c in d1["choices"]] == [c["text"] for c in d2["choices"]]
    assert d1["usage"]["prompt_tokens"] == 4


@pytest.mark.parametrize("body, status, code", [
    ({"model": "nope", "prompt": "x"}, 404, "not_found"),
    ({"prompt": "x"}, 400, "missing_field"),
    ({"model": 3, "prompt": "x"}, 400, "invalid_type"),
    ({"model": "lora-qv", "prompt": 3}, 400, "invalid_type"),
    ({"model": "lora-qv", "prompt": ""}, 400, "invalid_value"),
    ({"model": "lora-qv", "prompt": [1, 99999]}, 400, "invalid_value"),
    ({"model": "lora-qv", "prompt": "x", "max_tokens": 0}, 400, "invalid_value"),
    ({"model": "lora-qv", "prompt": "x", "max_tokens": "5"}, 400, "invalid_type"),
    ({"model": "lora-qv", "prompt": "x", "max_tokens": True}, 400, "invalid_type"),
    ({"model": "lora-qv", "prompt": "x", "max_tokens": 100000}, 400, "context_length_exceeded"),
    ({"model": "prompt-7", "prompt": "x" * 510, "max_tokens": 1}, 400, "context_length_exceeded"),
    ({"model": "lora-qv", "prompt": "x", "temperature": 5}, 400, "invalid_value"),
    ({"model": "lora-qv", "prompt": "x", "top_p": 0}, 400, "invalid_value"),
    ({"model": "lora-qv", "prompt": "x", "n": 0}, 400, "invalid_value"),
    ({"model": "lora-qv", "prompt": "x", "stop": [1]}, 400, "invalid_type"),
    ({"model": "lora-qv", "prompt": "x", "stream": "yes"}, 400, "invalid_type"),
    ({"model": "lora-qv", "prompt": "x", "seed": 1.5}, 400, "invalid_type"),
    ({"model": "lora-qv", "prompt": "x", "seed": 2**130}, 400, "invalid_value"),
    ({"model": "lora-qv", "prompt": "x", "temperature": float("nan")}, 400, "invalid_value"),
    ({"model": "lora-qv", "prompt": [1, "a"]}, 400, "invalid_type"),
    ({"model": "lora-qv", "prompt": [[]]}, 400, "invalid_value"),
    ({"model": "lora-qv", "prompt": "x", "stream_options": "yes"}, 400, "invalid_type"),
    ({"model": "lora-qv", "prompt": "x", "n": True}, 400, "invalid_type"),
])
def test_bad_completion_requests(client, body, status, code):
    got, doc = _post(client, "/v1/completions", body)
    assert got == status, doc
    assert doc["error"]["code"] == code and doc["error"]["message"] and doc["error"]["type"]


@pytest.mark.parametrize("messages", [None, [], "hi", [{"role": "user"}], [{"role": "robot", "content": "x"}],
                                      [{"role": "user", "content": [{"type": "image_url"}]}],
                                      [{"role": "user", "content": "x", "tool_call_id": "c"}],
                                      [{"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}]])
def test_bad_chat_requests(client, messages):
    status, doc = _post(client, "/v1/chat/completions", {"model": "lora-qv", "messages": messages})
    assert status == 400 and "messages" in doc["error"]["message"]


def test_malformed_json_and_adapter_for_another_base(stack, client, tmp_path):
    _, engine, _, _ = stack
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        resp = client.post("/v1/completions", data=raw, content_type="application/json")
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_json"
    other = build_tiny_base(tmp_path / "other-base", TinyBaseSpec(hidden_size=64, intermediate_size=128))
    from conftest import save_lora

    engine.registry.push(save_lora(other, tmp_path / "other"), name="foreign", task="t", base=str(other))
    status, doc = _post(client, "/v1/completions", {"model": "foreign", "prompt": "x"})
    assert status == 409 and doc["error"]["code"] == "incompatible_base"
    models = client.get("/v1/models").get_json()["data"]
    assert "foreign" not in [m["id"] for m in models]


def test_models_lists_base_and_compatible_adapters(stack, client):
    _, engine, _, _ = stack
    doc = client.get("/v1/models").get_json()
    by_id = {m["id"]: m for m in doc["data"]}
    assert by_id[engine.base_name]["parent"] is None
    for name in ("lora-qv", "lora-all", "prompt-4", "prompt-7"):
        assert by_id[name]["parent"] == engine.base_name
        assert isinstance(by_id[name]["loaded"], bool)


def test_load_and_unload_free_memory(client):
    status, doc = _post(client, "/v1/adapters/load", {"model": "prompt-7"})
    assert status == 200 and doc["loaded"]
    health = client.get("/health").get_json()
    assert "prompt-7@1" in [a["ref"] for a in health["loaded_adapters"]]
    before = health["memory"]["adapter_bytes"]
    models = {m["id"]: m for m in client.get("/v1/models").get_json()["data"]}
    assert models["prompt-7"]["loaded"] is True
    status, doc = _post(client, "/v1/adapters/unload", {"model": "prompt-7"})
    assert status == 200 and doc == {"model": "prompt-7@1", "loaded": False}
    health = client.get("/health").get_json()
    assert "prompt-7@1" not in [a["ref"] for a in health["loaded_adapters"]]
    assert health["memory"]["adapter_bytes"] == before - 7 * 128 * 4
    status, doc = _post(client, "/v1/adapters/unload", {"model": "prompt-7"})
    assert status == 404 and doc["error"]["code"] == "not_loaded"
    assert _post(client, "/v1/adapters/load", {"model": "missing"})[0] == 404
    assert _post(client, "/v1/adapters/load", {})[0] == 400


def test_health_and_metrics(stack, client):
    _, engine, _, _ = stack
    _post(client, "/v1/completions", {"model": "lora-qv", "prompt": "count me", "max_tokens": 3})
    _post(client, "/v1/completions", {"prompt": "no model"})
    health = client.get("/health").get_json()
    assert health["base"] == engine.base_name and health["quantization"] == "none"
    assert health["memory"]["base_bytes"] > 0
    text = client.get("/metrics").get_data(as_text=True)
    for needle in ('adapterhub_requests_total{adapter="lora-qv@1",endpoint="openai.completions",status="200"}',
                   'adapterhub_completion_tokens_total{adapter="lora-qv@1"}',
                   'adapterhub_request_latency_seconds_bucket{adapter="lora-qv@1",le="+Inf"}',
                   'adapterhub_time_to_first_token_seconds_count{adapter="lora-qv@1"}',
                   'adapterhub_adapter_cache_hits_total{kind="lora"}',
                   'adapterhub_adapter_cache_evictions_total{kind="prompt_tuning"}',
                   'adapterhub_adapter_load_seconds_total{kind="lora"}',
                   'adapterhub_batch_size_bucket{le="+Inf"}',
                   'adapterhub_adapters_resident{kind="lora"}',
                   'adapterhub_requests_total{adapter="unknown",endpoint="openai.completions",status="400"}'):
        assert needle in text, needle


def test_openai_client_completions_and_chat(stack):
    from openai import OpenAI

    _, engine, _, server = stack
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    done = client.completions.create(model="lora-qv", prompt="Hello", max_tokens=6, temperature=0)
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.completion_tokens >= 1
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="lora-qv", prompt="Hello", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == done.choices[0].text
    chat = client.chat.completions.create(model="prompt-4", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=6, temperature=0)
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="prompt-4", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0,
        stream=True, stream_options={"include_usage": True}) if c.choices]
    assert "".join(parts) == chat.choices[0].message.content
    follow_up = [{"role": "user", "content": "hi"}, chat.choices[0].message, {"role": "user", "content": "and?"}]
    assert client.chat.completions.create(model="prompt-4", messages=follow_up, max_tokens=2).choices  # null keys pass
    ids = [m.id for m in client.models.list().data]
    assert engine.base_name in ids and "prompt-4" in ids
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.completions.create(model="no-such", prompt="x", max_tokens=2)


def test_streaming_sends_the_first_token_before_the_last_is_generated(stack):
    """The engine is held at its second forward pass (the first decode step) until the client has
    read the first token: it can only arrive if streaming really sends tokens as they are made."""
    _, engine, _, server = stack
    gate, calls = threading.Event(), []

    def hold_first_decode_step(module, args):
        calls.append(1)
        if len(calls) == 2:
            gate.wait(30)

    hook = engine.model.register_forward_pre_hook(hold_first_decode_step)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        body = {"model": engine.base_name, "prompt": "stream", "max_tokens": 40, "temperature": 0, "stream": True,
                "return_token_ids": True}
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        first = resp.readline()
        assert first.startswith(b"data: {") and json.loads(first[6:])["choices"][0]["token_ids"]
        assert len(calls) <= 2 and engine.running == 1  # the engine cannot be past its first decode step
        gate.set()
        rest = resp.read().decode()
        conn.close()
    finally:
        gate.set()
        hook.remove()
    chunks = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("data: {")]
    assert rest.rstrip().endswith("data: [DONE]")
    assert len(chunks) >= 1 and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_client_going_away_cancels_its_request(stack):
    _, engine, _, server = stack
    body = json.dumps({"model": "lora-all", "prompt": "bye", "max_tokens": 450, "temperature": 0,
                       "stream": True}).encode()
    before = engine.stats.generated_tokens
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while b"data: " not in received:
            received += sock.recv(65536)
    deadline = time.monotonic() + 20
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.running == 0
    assert engine.stats.generated_tokens - before < 450, "the engine kept decoding for a client that left"


def test_models_lists_exactly_what_resolves(tiny_base, tmp_path):
    """One servability rule: on an engine without LoRA slots, ``/v1/models`` leaves the LoRAs out
    because resolving them is refused, and every model it lists resolves."""
    from adapterhub.errors import UnsupportedAdapter
    from adapterhub.server.engine.engine import Engine
    from serving_helpers import push_serving_adapters

    registry = LocalRegistry(tmp_path / "reg")
    push_serving_adapters(registry, tiny_base, tmp_path / "adapters")
    engine = Engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry)  # no LoRA slots
    listed = [m["id"] for m in create_app(registry, engine=engine).test_client().get("/v1/models").get_json()["data"]]
    assert sorted(listed) == sorted([engine.base_name, "prompt-4", "prompt-7"])
    assert [engine.resolve(name).kind for name in listed[1:]] == ["prompt_tuning", "prompt_tuning"]
    with pytest.raises(UnsupportedAdapter, match="without LoRA support"):
        engine.resolve("lora-qv")


def test_an_engine_that_is_not_running_answers_503(tiny_base, tmp_path):
    from adapterhub.server.engine.engine import Engine

    registry = LocalRegistry(tmp_path / "reg")
    stopped = Engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry)
    client = create_app(registry, engine=stopped).test_client()
    status, doc = _post(client, "/v1/completions", {"model": stopped.base_name, "prompt": "x", "max_tokens": 2})
    assert status == 503 and doc["error"]["code"] == "shutting_down"
