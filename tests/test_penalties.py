"""``presence_penalty``, ``frequency_penalty`` and ``logit_bias`` equal a reference decoder, per row.

The reference is written here from OpenAI's definition and runs on PEFT's own model, one token at
a time: ``logit[t] + bias[t] - frequency * count[t] - presence * (count[t] > 0)`` over the tokens
generated so far, then argmax. The server's rows run together in one held batch with rows that ask
for nothing, which must answer exactly as PEFT does alone.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from adapterhub.server.http.app import create_app
from serving_helpers import held_engine, peft_greedy, peft_model, start_test_engine


@pytest.fixture(scope="module")
def stack(tiny_base, tmp_path_factory):
    registry, engine, folders = start_test_engine(tiny_base, tmp_path_factory.mktemp("penalties"))
    yield create_app(registry, engine=engine), engine, folders
    engine.stop()


def reference_greedy(model, prompt: list[int], max_tokens: int, eos: int, presence: float = 0.0,
                     frequency: float = 0.0, bias: dict[int, float] | None = None) -> list[int]:
    out: list[int] = []
    for _ in range(max_tokens):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + out])).logits[0, -1].float()
        counts = Counter(out)
        adjusted = logits.tolist()
        for token, value in (bias or {}).items():
            adjusted[token] += value
        for token, count in counts.items():
            adjusted[token] -= frequency * count + presence * (count > 0)
        token = max(range(len(adjusted)), key=adjusted.__getitem__)
        out.append(token)
        if token == eos:
            break
    return out


# (model, prompt, presence, frequency, logit_bias)
PENALIZED = [
    (None, "aaaa", 0.0, 2.0, {}),
    ("lora-qv", "Hello world", 1.5, 0.0, {}),
    ("lora-all", "abc", -0.5, 1.0, {"32": 5.0, "258": -100}),
    ("prompt-4", "The cat sat", 2.0, 2.0, {"101": 3.5}),
]
PLAIN = [(None, "aaaa"), ("lora-qv", "Hello world"), ("prompt-4", "The cat sat")]


def _post(app, body):
    with app.test_client() as c:
        resp = c.post("/v1/completions", data=json.dumps(body), content_type="application/json")
        return resp.status_code, resp.get_json()


def test_penalties_and_biases_equal_the_reference_and_touch_no_other_row(stack, tiny_base):
    app, engine, folders = stack
    eos = engine.tokenizer.eos_token_id
    bodies = [{"model": m or engine.base_name, "prompt": p, "max_tokens": 12, "temperature": 0,
               "presence_penalty": pres, "frequency_penalty": freq, "logit_bias": bias, "return_token_ids": True}
              for m, p, pres, freq, bias in PENALIZED]
    bodies += [{"model": m or engine.base_name, "prompt": p, "max_tokens": 12, "temperature": 0,
                "return_token_ids": True} for m, p in PLAIN]
    with ThreadPoolExecutor(len(bodies)) as pool, held_engine(engine):
        futures = [pool.submit(_post, app, b) for b in bodies]
        deadline = time.monotonic() + 30
        while engine.queued < len(bodies) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.queued == len(bodies)
    answers = [f.result() for f in futures]
    assert max(engine.stats.batch_sizes) >= len(bodies)
    for (model, prompt, pres, freq, bias), (status, doc) in zip(PENALIZED, answers):
        assert status == 200, doc
        ids = engine.tokenizer.encode(prompt)
        got = doc["choices"][0]["token_ids"]
        want = reference_greedy(peft_model(tiny_base, folders.get(model)), ids, 12, eos, pres, freq,
                                {int(k): v for k, v in bias.items()})
        assert got == want, (model, prompt)
        assert got != peft_greedy(tiny_base, folders.get(model), ids, 12), "the penalty changed nothing"
    for (model, prompt), (status, doc) in zip(PLAIN, answers[len(PENALIZED):]):
        assert status == 200, doc
        ids = engine.tokenizer.encode(prompt)
        assert doc["choices"][0]["token_ids"] == peft_greedy(tiny_base, folders.get(model), ids, 12), model


def test_a_strong_bias_forces_its_token(stack):
    app, engine, _ = stack
    status, doc = _post(app, {"model": "lora-qv", "prompt": "x", "max_tokens": 5, "temperature": 0.7, "seed": 4,
                              "logit_bias": {"66": 100}, "return_token_ids": True})
    assert status == 200, doc
    assert doc["choices"][0]["token_ids"] == [66] * 5 and doc["choices"][0]["text"] == "BBBBB"
