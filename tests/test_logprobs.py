"""``logprobs``, ``top_logprobs`` and ``echo`` equal PEFT's log-softmax, row by row in one mixed batch.

Base, LoRA and soft-prompt requests (plus a sampled, penalized row beside them) are sent over HTTP
while the engine thread is held, so they are admitted and decoded together; each answer's scores
are compared with ``log_softmax`` of PEFT's own logits for the same adapter on the prompt and the
answer (fp32, within 1e-4). The unsupported-field tests are here too: each is a 400 naming it.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from adapterhub.server.http.app import create_app
from serving_helpers import held_engine, peft_greedy, peft_model, start_test_engine

TOL = 1e-4


@pytest.fixture(scope="module")
def stack(tiny_base, tmp_path_factory):
    registry, engine, folders = start_test_engine(tiny_base, tmp_path_factory.mktemp("logprobs"))
    yield create_app(registry, engine=engine), engine, folders
    engine.stop()


def _post(app, path, body):
    with app.test_client() as c:
        resp = c.post(path, data=json.dumps(body), content_type="application/json")
        return resp.status_code, resp.get_json()


def _peft_logprobs(tiny_base, folder, ids: list[int]) -> torch.Tensor:
    """PEFT's log-softmax over ``ids``, one row per real token (a soft prompt's virtual positions dropped)."""
    model = peft_model(tiny_base, folder)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[logits.shape[0] - len(ids):], -1)


def _expected_top(decode, logprobs: torch.Tensor, chosen: int, k: int) -> dict[str, float]:
    """The legacy ``top_logprobs`` entry: the chosen token, then the k most likely (first text wins)."""
    top = {decode(chosen): float(logprobs[chosen])}
    values, ids = logprobs.topk(k)
    for t, v in zip(ids.tolist(), values.tolist()):
        top.setdefault(decode(t), v)
    return top


def _assert_close_dicts(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < TOL for k in want), (got, want)


CASES = [  # (model, prompt, logprobs, echo)
    (None, "Hello world", 5, True),
    ("lora-qv", "Hello world", 3, True),
    ("lora-all", "A prompt for every linear layer", 5, False),
    ("prompt-4", "The cat sat", 5, True),
    ("prompt-7", "Q and A", 0, True),
]


def test_completion_logprobs_and_echo_equal_peft_in_one_mixed_batch(stack, tiny_base):
    app, engine, folders = stack
    decode = lambda t: engine.tokenizer.decode([t])  # noqa: E731
    bodies = [{"model": model or engine.base_name, "prompt": prompt, "max_tokens": 6, "temperature": 0,
               "logprobs": k, "echo": echo, "return_token_ids": True} for model, prompt, k, echo in CASES]
    # a sampled, penalized row beside them: its settings must change nothing for the others
    bodies.append({"model": "lora-qv", "prompt": "noise", "max_tokens": 6, "temperature": 0.9, "seed": 1,
                   "frequency_penalty": 2, "presence_penalty": 1, "logit_bias": {"65": 50}, "logprobs": 2})
    prefills = engine.stats.prefills
    with ThreadPoolExecutor(len(bodies)) as pool, held_engine(engine):
        futures = [pool.submit(_post, app, "/v1/completions", b) for b in bodies]
        deadline = time.monotonic() + 30
        while engine.queued < len(bodies) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.queued == len(bodies)
    answers = [f.result() for f in futures]
    # held together: the opener's prefill, one for the plain rows, one per echo row
    assert engine.stats.prefills - prefills == 2 + sum(echo for *_, echo in CASES)
    assert max(engine.stats.batch_sizes) >= len(bodies)
    for (model, prompt, k, echo), (status, doc) in zip(CASES, answers):
        assert status == 200, doc
        choice = doc["choices"][0]
        ids, answer = engine.tokenizer.encode(prompt), choice["token_ids"]
        folder = folders.get(model)
        assert answer == peft_greedy(tiny_base, folder, ids, 6), model
        want = _peft_logprobs(tiny_base, folder, ids + answer)
        scores = choice["logprobs"]
        steps = ids + answer if echo else answer
        first = 0 if echo else len(ids)
        assert scores["tokens"] == [decode(t) for t in steps]
        assert choice["text"] == (prompt if echo else "") + engine.tokenizer.decode(answer, skip_special_tokens=True)
        offsets = [sum(len(t) for t in scores["tokens"][:i]) for i in range(len(steps))]
        assert scores["text_offset"] == offsets
        for j, (token, got) in enumerate(zip(steps, scores["token_logprobs"])):
            position = first + j
            if position == 0:  # nothing precedes the first prompt token
                assert got is None and scores["top_logprobs"][j] is None
                continue
            row = want[position - 1]
            assert abs(got - float(row[token])) < TOL, (model, position)
            _assert_close_dicts(scores["top_logprobs"][j], _expected_top(decode, row, token, k))
    status, doc = answers[-1]
    assert status == 200 and len(doc["choices"][0]["logprobs"]["token_logprobs"]) == 6


def test_chat_logprobs_and_top_logprobs_equal_peft(stack, tiny_base):
    app, engine, folders = stack
    messages = [{"role": "user", "content": "hi there"}]
    status, doc = _post(app, "/v1/chat/completions", {
        "model": "prompt-4", "messages": messages, "max_completion_tokens": 5, "temperature": 0,
        "logprobs": True, "top_logprobs": 4, "return_token_ids": True})
    assert status == 200, doc
    text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    choice = doc["choices"][0]
    answer = choice["token_ids"]
    assert answer == peft_greedy(tiny_base, folders["prompt-4"], ids, 5) and len(answer) <= 5
    want = _peft_logprobs(tiny_base, folders["prompt-4"], ids + answer)
    content = choice["logprobs"]["content"]
    assert len(content) == len(answer)
    for j, (token, entry) in enumerate(zip(answer, content)):
        row = want[len(ids) + j - 1]
        assert entry["token"] == engine.tokenizer.decode([token])
        assert entry["bytes"] == list(entry["token"].encode())
        assert abs(entry["logprob"] - float(row[token])) < TOL
        values, top_ids = row.topk(4)
        assert [e["token"] for e in entry["top_logprobs"]] == [engine.tokenizer.decode([t]) for t in top_ids.tolist()]
        assert all(abs(e["logprob"] - v) < TOL for e, v in zip(entry["top_logprobs"], values.tolist()))


def test_streamed_scores_equal_the_whole_answer(stack):
    """Streaming returns the same scores, one token per chunk; ``echo`` puts the prompt in the first."""
    app, engine, _ = stack
    body = {"model": "lora-qv", "prompt": "stream me", "max_tokens": 5, "temperature": 0, "logprobs": 2, "echo": True}
    _, whole = _post(app, "/v1/completions", body)
    with app.test_client() as c:
        raw = c.post("/v1/completions", data=json.dumps({**body, "stream": True}),
                     content_type="application/json").get_data(as_text=True)
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in chunks:
        for key in merged:
            merged[key] += chunk["choices"][0]["logprobs"][key]
    assert merged == whole["choices"][0]["logprobs"]
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == whole["choices"][0]["text"]


def test_no_logprobs_unless_asked(stack):
    app, _, _ = stack
    _, doc = _post(app, "/v1/completions", {"model": "lora-qv", "prompt": "x", "max_tokens": 2, "echo": True})
    assert doc["choices"][0]["logprobs"] is None and doc["choices"][0]["text"].startswith("x")
    _, doc = _post(app, "/v1/chat/completions", {"model": "lora-qv", "messages": [{"role": "user", "content": "x"}],
                                                 "max_tokens": 2})
    assert doc["choices"][0]["logprobs"] is None


@pytest.mark.parametrize("path, extra, field", [
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "sometimes"}, "tool_choice"),
    ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format"),  # json ones: structured outputs
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"function_call": "auto"}, "function_call"),
    ("/v1/chat/completions", {"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ("/v1/chat/completions", {"echo": True}, "echo"),
    ("/v1/chat/completions", {"modalities": ["audio"]}, "modalities"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": 3}, "logprobs"),
    ("/v1/completions", {"suffix": "tail"}, "suffix"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/completions", {"logprobs": 6}, "logprobs"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
    ("/v1/completions", {"echo": "yes"}, "echo"),
    ("/v1/completions", {"presence_penalty": 2.5}, "presence_penalty"),
    ("/v1/completions", {"frequency_penalty": "1"}, "frequency_penalty"),
    ("/v1/completions", {"logit_bias": {"65": 101}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"999999": 1}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"a": 1}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
    ("/v1/completions", {"max_completion_tokens": 0}, "max_completion_tokens"),
    ("/v1/completions", {"guided_json": 5}, "guided_json"),
])
def test_every_unsupported_or_bad_field_is_a_400_naming_it(stack, path, extra, field):
    app, _, _ = stack
    base = {"prompt": "x"} if path.endswith("/completions") and "chat" not in path else \
        {"messages": [{"role": "user", "content": "x"}]}
    status, doc = _post(app, path, {"model": "lora-qv", "max_tokens": 2, **base, **extra})
    assert status == 400, doc
    assert field in doc["error"]["message"], doc


@pytest.mark.parametrize("extra", [
    {"user": "u1", "stream_options": None, "seed": 3, "stop": ["zz"], "n": 1},
    {"tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "functions": None},
    {"suffix": None, "best_of": 1, "logit_bias": {}, "presence_penalty": 0},
])
def test_harmless_fields_clients_send_are_accepted(stack, extra):
    app, _, _ = stack
    body = {"model": "lora-qv", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **extra}
    if "suffix" in extra or "best_of" in extra:
        body = {**{k: v for k, v in body.items() if k != "messages"}, "prompt": "x"}
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    status, doc = _post(app, path, body)
    assert status == 200, doc


def test_max_completion_tokens_on_both_endpoints(stack):
    app, _, _ = stack
    for path, body in (("/v1/completions", {"prompt": "count"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "count"}]})):
        status, doc = _post(app, path, {"model": "lora-qv", "max_completion_tokens": 3, "temperature": 0,
                                        "logit_bias": {"258": -100}, **body})  # no EOS: all 3 tokens
        assert status == 200, doc
        assert doc["usage"]["completion_tokens"] == 3 and doc["choices"][0]["finish_reason"] == "length"
