"""Serving prompt templates: ``model`` names one per request, the prompt text is rewritten, and the row runs
as a base row in the same batch as LoRA and soft-prompt rows; the answer equals the bare base's greedy
answer (transformers, PEFT's base) on the rendered prompt. Through the real HTTP server and its clients."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapterhub.prompt_template import FewShot, PromptTemplate, write_prompt_template
from adapterhub.server.http.app import create_app
from adapterhub.server.http.wsgi import start_in_thread
from serving_helpers import held_engine, peft_greedy, start_test_engine

QA = PromptTemplate(template="Question: {input}\nAnswer:", system="Answer in one word.",
                    examples=(FewShot("Sky colour?", " blue"), FewShot("Grass colour?", " green")))
SAY = PromptTemplate(template="Say {{it}}: {input}")


@pytest.fixture(scope="module")
def stack(tiny_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("templates")
    registry, engine, folders = start_test_engine(tiny_base, workdir)
    for name, template in (("qa-template", QA), ("say-template", SAY)):
        registry.push(write_prompt_template(template, workdir / name), name=name, task="qa", base=str(tiny_base))
    app = create_app(registry, engine=engine)
    with start_in_thread(app, threads=8, stream_tokens=True) as server:
        yield app, engine, folders, server
    engine.stop()


def _post(client, path, body):
    resp = client.post(path, data=json.dumps(body), content_type="application/json")
    return resp.status_code, resp.get_json()


def _wait_queued(engine, count: int) -> None:
    deadline = time.monotonic() + 60
    while engine.queued < count:
        assert time.monotonic() < deadline, f"only {engine.queued} of {count} requests reached the queue"
        time.sleep(0.01)


def test_templates_are_base_exact_in_one_mixed_batch_with_lora_and_soft_prompts(stack, tiny_base):
    """Every request is queued while the engine is held, so all of them are admitted in one prefill and
    decoded together: two templates, two LoRAs, a soft prompt and the bare base."""
    app, engine, folders, _ = stack
    cases = [("qa-template", "Sea colour?", 12), ("lora-qv", "Hello world", 10), ("say-template", "a {b} c", 9),
             ("prompt-4", "The cat sat", 11), ("lora-all", "abc", 8), (engine.base_name, "plain", 7)]

    def ask(case):
        model, prompt, n = case
        with app.test_client() as c:
            return _post(c, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0,
                                                 "return_token_ids": True})

    with ThreadPoolExecutor(len(cases)) as pool:
        with held_engine(engine):
            futures = [pool.submit(ask, case) for case in cases]
            _wait_queued(engine, len(cases))
        answers = [f.result() for f in futures]
    for (model, prompt, n), (status, doc) in zip(cases, answers):
        assert status == 200, doc
        template = {"qa-template": QA, "say-template": SAY}.get(model)
        text = template.render(prompt) if template else prompt
        ids = engine.tokenizer.encode(text)
        adapter = None if template else folders.get(model)
        want = peft_greedy(tiny_base, adapter, ids, n)
        assert doc["choices"][0]["token_ids"] == want, model
        assert doc["usage"]["prompt_tokens"] == len(ids), model


def test_chat_with_a_template_equals_the_base_on_the_templated_conversation(stack, tiny_base):
    app, engine, _, server = stack
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    conversation = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Sun colour?"}]
    chat = client.chat.completions.create(model="qa-template", messages=conversation, max_tokens=10, temperature=0,
                                          extra_body={"return_token_ids": True})
    text = engine.tokenizer.apply_chat_template(QA.messages(conversation), add_generation_prompt=True, tokenize=False)
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    assert chat.choices[0].model_extra["token_ids"] == peft_greedy(tiny_base, None, ids, 10)
    assert chat.usage.prompt_tokens == len(ids)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="qa-template", messages=conversation, max_tokens=10, temperature=0, stream=True) if c.choices)
    assert streamed == chat.choices[0].message.content


def test_echo_returns_the_rendered_prompt(stack):
    app, *_ = stack
    status, doc = _post(app.test_client(), "/v1/completions", {"model": "say-template", "prompt": "x", "max_tokens": 2,
                                                               "temperature": 0, "echo": True})
    assert status == 200 and doc["choices"][0]["text"].startswith("Say {it}: x")


@pytest.mark.parametrize("body, code, message", [
    ({"prompt": [1, 2, 3]}, "invalid_value", "is a prompt template, which applies to text"),
    ({"prompt": [[1, 2], [3]]}, "invalid_value", "not token ids"),
])
def test_token_id_prompts_are_refused_for_templates(stack, body, code, message):
    app, *_ = stack
    status, doc = _post(app.test_client(), "/v1/completions", {"model": "qa-template", "max_tokens": 2, **body})
    assert status == 400 and doc["error"]["code"] == code and message in doc["error"]["message"]


def test_chat_without_a_user_turn_is_a_400(stack):
    app, *_ = stack
    status, doc = _post(app.test_client(), "/v1/chat/completions",
                        {"model": "qa-template", "messages": [{"role": "system", "content": "hi"}]})
    assert status == 400 and "has none" in doc["error"]["message"]


def test_models_load_unload_and_a_template_for_another_base(stack, tmp_path):
    app, engine, _, _ = stack
    client = app.test_client()
    models = {m["id"]: m for m in client.get("/v1/models").get_json()["data"]}
    assert models["qa-template"]["adapter_type"] == "prompt_template"
    assert models["qa-template"]["parent"] == engine.base_name
    assert _post(client, "/v1/adapters/load", {"model": "say-template"})[0] == 200
    assert "say-template@1" in [a["ref"] for a in client.get("/health").get_json()["loaded_adapters"]]
    assert _post(client, "/v1/adapters/unload", {"model": "say-template"}) == (
        200, {"model": "say-template@1", "loaded": False})
    assert _post(client, "/v1/adapters/unload", {"model": "say-template"})[0] == 404

    from adapterhub.tinybase import TinyBaseSpec, build_tiny_base

    other = build_tiny_base(tmp_path / "other-base", TinyBaseSpec(hidden_size=64, intermediate_size=128))
    engine.registry.push(write_prompt_template(SAY, tmp_path / "foreign"), name="foreign-template", task="t",
                         base=str(other))
    status, doc = _post(client, "/v1/completions", {"model": "foreign-template", "prompt": "x"})
    assert status == 409 and doc["error"]["code"] == "incompatible_base"
    assert "foreign-template" not in [m["id"] for m in client.get("/v1/models").get_json()["data"]]


def test_a_template_is_read_once_and_concurrent_requests_share_it(stack):
    app, engine, _, _ = stack
    cache = engine.adapters.prompt_templates
    loads = cache.stats.loads
    barrier = threading.Barrier(6)

    def ask(i):
        barrier.wait()
        with app.test_client() as c:
            return _post(c, "/v1/completions", {"model": "qa-template", "prompt": f"q{i}", "max_tokens": 2})[0]

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(ask, range(6))) == [200] * 6
    assert cache.stats.loads - loads <= 1


def test_python_api_generate_applies_the_template(stack, tiny_base):
    from adapterhub.server import EngineHandle

    _, engine, _, _ = stack
    handle = EngineHandle(engine=engine, registry=engine.registry)  # the running engine; the fixture stops it
    ids = engine.tokenizer.encode(QA.render("Moon colour?"))
    want = engine.tokenizer.decode(peft_greedy(tiny_base, None, ids, 6), skip_special_tokens=True)
    assert handle.generate("Moon colour?", adapter="qa-template", max_tokens=6) == want
