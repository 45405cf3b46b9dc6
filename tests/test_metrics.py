"""``/metrics`` in the Prometheus exposition, read back with ``prometheus_client``'s own parser.

The vLLM names (what dashboards and gateway routers read) appear and move under load: with the
engine held inside a forward pass, requests sent over loopback show as running and waiting; once
they finish, the success, token and latency families have counted them and the served LoRA
adapter shows in ``vllm:lora_requests_info``. ``adapterhub hub serve`` answers ``/health`` and
``/metrics`` too.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapterhub.server.http.app import create_app
from adapterhub.server.http.lora_names import LoraNames
from adapterhub.server.http.wsgi import start_in_thread
from serving_helpers import held_engine, start_test_engine

WAITING = 3


def _scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, list]:
    """Family name -> its samples (counters keep their ``_total`` sample names)."""
    req = urllib.request.Request(url + "/metrics", headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(families: dict[str, list], family: str, sample: str, **labels: str) -> float:
    found = [s.value for s in families[family] if s.name == sample and all(s.labels.get(k) == v
                                                                            for k, v in labels.items())]
    assert len(found) == 1, (sample, labels, families[family])
    return found[0]


def _complete(url: str, model: str, n_tokens: int) -> None:
    body = json.dumps({"model": model, "prompt": [5, 6, 7], "max_tokens": n_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200


@pytest.fixture(scope="module")
def server(tiny_base, tmp_path_factory):
    _, engine, _ = start_test_engine(tiny_base, tmp_path_factory.mktemp("metrics"))
    names = LoraNames(engine)
    names.add("served-lora", "lora-qv")
    handle = start_in_thread(create_app(engine.registry, engine=engine, lora_names=names), threads=16,
                             stream_tokens=True)
    try:
        yield engine, handle.url
    finally:
        handle.close()
        engine.stop()


def test_vllm_metrics_move_under_load(server):
    engine, url = server
    model = engine.base_name
    before = _scrape(url)
    for family in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:time_to_first_token_seconds",
                   "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds", "vllm:request_success",
                   "vllm:lora_requests_info", "vllm:prompt_tokens", "vllm:generation_tokens",
                   "process_cpu_seconds", "process_resident_memory_bytes"):
        assert family in before, family
    stops = _value(before, "vllm:request_success", "vllm:request_success_total", finished_reason="length")
    ttft = _value(before, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count")
    itl = _value(before, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count")
    generated = _value(before, "vllm:generation_tokens", "vllm:generation_tokens_total")

    with held_engine(engine, in_decode=True):
        threads = [threading.Thread(target=_complete, args=(url, "served-lora", 4)) for _ in range(WAITING)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while engine.queued < WAITING and time.monotonic() < deadline:
            time.sleep(0.02)
        during = _scrape(url)
    for t in threads:
        t.join(60)

    assert _value(during, "vllm:num_requests_running", "vllm:num_requests_running", model_name=model) == 1
    assert _value(during, "vllm:num_requests_waiting", "vllm:num_requests_waiting", model_name=model) == WAITING
    info = during["vllm:lora_requests_info"][0]
    assert info.labels["running_lora_adapters"] == "served-lora" and info.labels["waiting_lora_adapters"] == ""
    assert info.labels["max_lora"] == "4" and abs(info.value - time.time()) < 60

    after = _scrape(url)
    assert _value(after, "vllm:num_requests_waiting", "vllm:num_requests_waiting") == 0
    assert _value(after, "vllm:request_success", "vllm:request_success_total", finished_reason="length") \
        == stops + WAITING
    assert _value(after, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") \
        == ttft + WAITING
    assert _value(after, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count") \
        == itl + WAITING * 3  # 4 tokens: 3 intervals each
    assert _value(after, "vllm:generation_tokens", "vllm:generation_tokens_total") == generated + WAITING * 4
    assert _value(after, "adapterhub_requests", "adapterhub_requests_total", adapter="lora-qv@1",
                  endpoint="openai.completions", status="200") >= WAITING


def test_finish_reasons_are_counted_by_name(server):
    engine, url = server
    before = _scrape(url)
    body = json.dumps({"model": engine.base_name, "prompt": [5, 6, 7], "max_tokens": 64, "temperature": 0,
                       "stop": [engine.tokenizer.decode([7])]}).encode()
    urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", body,
                                                  {"Content-Type": "application/json"}), timeout=60).read()
    after = _scrape(url)
    moved = {reason: _value(after, "vllm:request_success", "vllm:request_success_total", finished_reason=reason)
             - _value(before, "vllm:request_success", "vllm:request_success_total", finished_reason=reason)
             for reason in ("stop", "length", "abort")}
    assert sum(moved.values()) == 1 and moved["abort"] == 0


def test_hub_serve_answers_health_and_metrics(hub):
    with urllib.request.urlopen(hub.url + "/health", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"
    for _ in range(2):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(hub.url + "/api/versions/missing", timeout=10)
    families = _scrape(hub.url)
    assert "process_cpu_seconds" in families
    statuses = {(s.labels["route"], s.labels["status"]): s.value for s in families["adapterhub_hub_requests"]
                if s.name == "adapterhub_hub_requests_total"}
    assert statuses[("/health", "200")] == 1
    assert sum(v for (route, status), v in statuses.items() if status == "404") == 2
    assert all(not route.startswith("/api/versions/missing") for route, _ in statuses)  # routes, not raw paths


def test_hub_metrics_follow_the_read_rule(tmp_path):
    from remote_helpers import start_hub

    from adapterhub.server.http.auth import READ_TOKEN_REQUIRED

    hub = start_hub(tmp_path / "hub", {READ_TOKEN_REQUIRED: True})
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            _scrape(hub.url)
        assert refused.value.code == 401
        assert "adapterhub_hub_requests" in _scrape(hub.url, {"Authorization": f"Bearer {hub.read_token}"})
        with urllib.request.urlopen(hub.url + "/health", timeout=10) as resp:  # open for load balancers
            assert resp.status == 200
    finally:
        hub.handle.close()
