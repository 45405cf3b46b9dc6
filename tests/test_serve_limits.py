"""Admission control on ``adapterhub serve``: what one request may ask, refused before the work.

The issue's scenarios run against the server as a user runs it (its own process, so its memory is
measured alone): a 200-prompt x n=16 request, 10 MB prompts, a body over the limit. The queue
limit, the engine's error codes and the flag defaults run in process, on the real engine.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import urllib.request
from urllib.parse import urlsplit

import psutil
import pytest

from adapterhub.registry import LocalRegistry
from serving_helpers import announce_body, start_serve_process

KEYS = ("limits-key-a", "limits-key-b")
MB = 1_000_000


@pytest.fixture(scope="module")
def served(tiny_base, tmp_path_factory):
    args = ["--base", str(tiny_base), "--quantize", "none", "--device", "cpu", "--max-batch-size", "4",
            "--registry", str(tmp_path_factory.mktemp("limits") / "registry")]
    for key in KEYS:  # repeatable flag
        args += ["--api-key", key]
    env = {k: v for k, v in os.environ.items() if k != "ADAPTERHUB_API_KEY"}
    proc, url, _ = start_serve_process(args, env)
    try:
        yield url, psutil.Process(proc.pid), str(tiny_base)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def _post(url: str, path: str, body: dict | bytes, key: str = KEYS[1]) -> tuple[int, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, raw, {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    doc = json.loads(resp.read())
    conn.close()
    return resp.status, doc


def _timed_post(url: str, path: str, body: dict | bytes) -> tuple[int, dict, float]:
    started = time.perf_counter()
    status, doc = _post(url, path, body)
    return status, doc, time.perf_counter() - started


def _rss(process: psutil.Process) -> int:
    time.sleep(0.3)  # let the worker thread finish its response
    return process.memory_info().rss


def test_a_flood_request_is_refused_and_the_next_answers_at_once(served):
    url, _, base = served
    flood = {"model": base, "prompt": [f"prompt number {i}" for i in range(200)], "n": 16, "max_tokens": 16}
    status, doc, took = _timed_post(url, "/v1/completions", flood)
    assert status == 400 and doc["error"]["code"] == "too_many_generations", doc
    assert "3200" in doc["error"]["message"]
    status, doc, took = _timed_post(url, "/v1/completions", {"model": base, "prompt": "Hello", "max_tokens": 8})
    assert status == 200 and took < 2, (doc, took)
    # at the limit (4 prompts x n=16 = 64 answers) the request is served
    status, doc = _post(url, "/v1/completions", {"model": base, "prompt": ["a", "b", "c", "d"], "n": 16,
                                                  "max_tokens": 1})
    assert status == 200 and len(doc["choices"]) == 64


def test_a_10mb_prompt_is_refused_fast_and_memory_returns(served):
    url, process, base = served
    _post(url, "/v1/completions", {"model": base, "prompt": "warm up", "max_tokens": 2})
    before = _rss(process)
    huge = "word " * (2 * MB)  # 10 MB
    cases = [("/v1/completions", {"model": base, "prompt": huge, "max_tokens": 4}),
             ("/v1/completions", {"model": base, "prompt": ["short", huge], "max_tokens": 4}),
             ("/v1/chat/completions", {"model": base, "messages": [{"role": "user", "content": huge}]})]
    encoded = [(path, json.dumps(body).encode()) for path, body in cases]
    for path, body in encoded * 2:  # twice: nothing may pile up from one refusal to the next
        status, doc, took = _timed_post(url, path, body)
        assert status == 400 and doc["error"]["code"] == "prompt_too_long", doc
        assert took < 1, took
    after = _rss(process)
    assert after - before < 50 * MB, (before, after)


def test_a_body_over_the_limit_is_refused_before_it_is_read(served):
    """20 MB announced (over the 16 MiB default): the 413 comes back before the body is sent."""
    url, process, base = served
    before = _rss(process)
    started = time.monotonic()
    head, body = announce_body(url, 20 * MB, b"Authorization: Bearer %s\r\n" % KEYS[0].encode(), timeout=10)
    assert time.monotonic() - started < 1
    assert head.startswith(b"HTTP/1.1 413") and b"application/json" in head
    assert json.loads(body)["error"]["message"]
    assert _rss(process) - before < 50 * MB


def test_token_id_prompts_are_bounded_before_they_are_checked(served):
    url, _, base = served
    status, doc = _post(url, "/v1/completions", {"model": base, "prompt": [1] * 100_000, "max_tokens": 1})
    assert status == 400 and doc["error"]["code"] == "prompt_too_long"


@pytest.fixture(scope="module")
def queue_of_two(tiny_base, tmp_path_factory):
    """One batch row and two queued answers: a request for eight fills it."""
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.wsgi import start_in_thread

    registry = LocalRegistry(tmp_path_factory.mktemp("queue") / "registry")
    engine = create_engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry,
                           max_batch_size=1, max_queued_requests=2).start()
    with start_in_thread(create_app(registry, engine=engine), stream_tokens=True) as server:
        yield engine, server
    engine.stop()


def test_a_full_queue_answers_429_with_retry_after(queue_of_two):
    from openai import OpenAI, RateLimitError

    engine, server = queue_of_two
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(RateLimitError) as refused:
        client.completions.create(model=engine.base_name, prompt="fill", n=8, max_tokens=50)
    response = refused.value.response
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == "queue_full"
    deadline = time.monotonic() + 10  # the refused request's queued answers were cancelled
    while (engine.running or engine.queued) and time.monotonic() < deadline:
        time.sleep(0.05)
    done = client.completions.create(model=engine.base_name, prompt="after", max_tokens=4, temperature=0)
    assert done.choices[0].finish_reason in ("stop", "length")
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    refusals = [line for line in metrics.splitlines() if line.startswith("adapterhub_queue_full_rejections_total ")]
    assert refusals and float(refusals[0].split()[1]) >= 1


def test_metrics_export_every_engine_counter(queue_of_two):
    from dataclasses import fields

    from adapterhub.server.http.health import _ENGINE_COUNTERS, _ENGINE_HISTOGRAMS

    engine, server = queue_of_two
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    for f in fields(engine.stats):
        if f.name in _ENGINE_HISTOGRAMS:
            continue
        name = _ENGINE_COUNTERS.get(f.name, (f"adapterhub_engine_{f.name}_total",))[0]
        assert f"# TYPE {name} counter" in metrics, f.name


def test_an_adapter_with_non_finite_logits_answers_422_and_others_are_served(tiny_base, tmp_path):
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model
    from adapterhub.server.http.app import create_app
    from conftest import save_lora
    from serving_helpers import save_overflowing_lora

    registry = LocalRegistry(tmp_path / "registry")
    registry.push(save_overflowing_lora(tiny_base, tmp_path / "nan"), name="lora-nan", task="t", base=str(tiny_base))
    registry.push(save_lora(tiny_base, tmp_path / "ok"), name="lora-ok", task="t", base=str(tiny_base))
    with create_engine(load_base_model(str(tiny_base), quantize="none", device="cpu"), registry) as engine:
        client = create_app(registry, engine=engine).test_client()
        bad = client.post("/v1/completions", json={"model": "lora-nan", "prompt": "Hello", "max_tokens": 4})
        assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "non_finite_logits"
        good = client.post("/v1/completions", json={"model": "lora-ok", "prompt": "Hello", "max_tokens": 4})
        assert good.status_code == 200
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'adapterhub_failed_requests_total{code="non_finite_logits"} 1' in metrics
