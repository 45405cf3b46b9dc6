"""``adapterhub serve --replicas 2`` on a real local Ray: the same answers as one process, routed by adapter.

One module-wide fleet (2 replicas of the tiny base, fp32) and one plain ``adapterhub serve`` on the
same registry, both started as users start them; the real ``openai`` client talks to both. The
replica-kill test runs last: it SIGKILLs a replica's process under load.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

ray = pytest.importorskip("ray", reason="the Ray tests need adapterhub[ray]")

from serving_helpers import ADAPTER_SPECS, announce_body, push_serving_adapters, start_serve_process  # noqa: E402

MODELS = [*ADAPTER_SPECS, None]  # None: the base
PROMPTS = ["The quick brown fox", "Once upon a time", "1, 2, 3,"]
ENGINE_PROCESS = "ServeReplica:adapterhub:AdapterEngine"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KEY = "fleet-test-key"


def _post(url: str, body: bytes | dict, timeout: float = 60, key: str | None = KEY) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


@pytest.fixture(scope="module")
def servers(tiny_base, tmp_path_factory):
    """(single-process URL, fleet URL, base name, registry) on one registry holding the ``ADAPTER_SPECS``
    adapters: the single server reads its folder, the fleet's replicas the hub serving it (a read
    token required), as replicas on other machines would."""
    from adapterhub.server.http.auth import READ_TOKEN_REQUIRED
    from remote_helpers import start_hub

    work = tmp_path_factory.mktemp("ray")
    hub = start_hub(work / "registry", {READ_TOKEN_REQUIRED: True})
    push_serving_adapters(hub.registry, tiny_base, work / "adapters")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    common = ["--base", str(tiny_base), "--quantize", "none", "--max-loaded-adapters", "4", "--api-key", KEY]
    single, single_url, _ = start_serve_process([*common, "--registry", str(work / "registry")], env)
    fleet, fleet_url, lines = start_serve_process([*common, "--registry", hub.url, "--token", hub.read_token,
                                                   "--replicas", "2", "--port", str(_free_port()),
                                                   "--lora-modules", "sqlish=lora-qv"], env)
    try:
        yield single_url, fleet_url, str(tiny_base), hub.registry
    finally:
        for proc in (fleet, single):
            proc.send_signal(signal.SIGINT)
        for proc in (fleet, single):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        hub.handle.close()


def _client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _completion(client, model: str, prompt: str, *, stream: bool = False) -> tuple[str, list[int]]:
    kwargs = dict(model=model, prompt=prompt, max_tokens=8, temperature=0, extra_body={"return_token_ids": True})
    if stream:
        chunks = list(client.completions.create(stream=True, **kwargs))
        return "".join(c.choices[0].text for c in chunks if c.choices), [
            t for c in chunks if c.choices for t in (c.choices[0].model_extra or {}).get("token_ids", [])]
    out = client.completions.create(**kwargs)
    return out.choices[0].text, out.choices[0].model_extra["token_ids"]


def test_fleet_gives_the_single_server_greedy_tokens_for_mixed_concurrent_requests(servers):
    single_url, fleet_url, base, _ = servers
    single, fleet = _client(single_url), _client(fleet_url)
    jobs = [(m or base, p) for m in MODELS for p in PROMPTS]
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        want = list(pool.map(lambda j: _completion(single, *j), jobs))
        got = list(pool.map(lambda j: _completion(fleet, *j), jobs))
    assert got == want
    assert all(ids for _, ids in got)


def test_fleet_serves_a_lora_modules_name_as_the_adapter_it_names(servers):
    single_url, fleet_url, _, _ = servers
    single, fleet = _client(single_url), _client(fleet_url)
    for prompt in PROMPTS:
        assert _completion(fleet, "sqlish", prompt) == _completion(single, "lora-qv", prompt)
    assert "sqlish" in [m.id for m in fleet.models.list()]


def test_fleet_chat_and_streaming_match_the_single_server(servers):
    single_url, fleet_url, base, _ = servers
    single, fleet = _client(single_url), _client(fleet_url)
    for model in ("lora-all", "prompt-4", base):
        assert _completion(fleet, model, PROMPTS[0], stream=True) == _completion(single, model, PROMPTS[0])
        messages = [{"role": "user", "content": "Name a colour."}]
        want = single.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)
        got = fleet.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)
        assert got.choices[0].message.content == want.choices[0].message.content


def test_fleet_holds_answers_to_schemas_and_tools_as_the_single_server_does(servers):
    """Structured outputs and tool calling reach the replicas by the same code: the same JSON under
    a schema, the same enforced call, from a replica as from the single server."""
    single_url, fleet_url, _, _ = servers
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                                               "count": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["colour", "count"], "additionalProperties": False}
    small = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"]}
    tool = {"type": "function", "function": {"name": "paint", "parameters": small}}  # the tiny base's context is 512
    messages = [{"role": "user", "content": "Pick a colour."}]
    bodies = [
        {"model": "lora-qv", "messages": messages, "max_tokens": 40, "temperature": 0,
         "response_format": {"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}}},
        {"model": "lora-all", "messages": messages, "max_tokens": 100, "temperature": 0, "tools": [tool],
         "parallel_tool_calls": False,
         "tool_choice": "required"},
    ]
    for body in bodies:
        answers = [_client(url).chat.completions.create(**body) for url in (single_url, fleet_url)]
        want, got = (a.choices[0].message for a in answers)
        assert got.content == want.content  # call ids are random: compare what each call says
        assert [c.function for c in got.tool_calls or []] == [c.function for c in want.tool_calls or []]
        if body.get("tools"):
            assert got.tool_calls, (answers[0].choices[0].finish_reason, got)
            assert json.loads(got.tool_calls[0].function.arguments).keys() == {"n"}
        else:
            assert json.loads(got.content).keys() == {"colour", "count"}


def test_each_replica_reuses_prompt_prefixes(servers):
    """Affinity sends an adapter's requests to one replica, whose engine keeps their prefix; a
    scrape of /metrics reaches one replica at a time, so several scrapes see both."""
    _, fleet_url, _, _ = servers
    fleet = _client(fleet_url)
    prompt = "A shared beginning, long enough for a few blocks of tokens to be kept for reuse: " * 2
    first, second = (_completion(fleet, "prompt-7", prompt + tail) for tail in ("one", "two"))
    assert first[1] and second[1]
    reused = []
    for _ in range(12):
        with urllib.request.urlopen(fleet_url + "/metrics", timeout=60) as answer:
            reused += [float(line.split()[-1]) for line in answer.read().decode().splitlines()
                       if line.startswith("adapterhub_prefix_cache_tokens_reused_total")]
    assert reused and max(reused) > 0, reused


@pytest.mark.parametrize("body", [
    {"model": "no-such-adapter", "prompt": "x"},
    {"model": "lora-qv"},
    {"model": "lora-qv", "prompt": "x", "tools": [{"type": "function"}]},
    {"model": "lora-qv", "prompt": "x", "n": 999},
    {"model": "lora-qv", "prompt": "x", "max_tokens": "many"},
    {"model": "lora-qv", "prompt": "x", "max_tokens": 10**9},
    b"{not json",
])
def test_fleet_refuses_bad_requests_with_the_single_servers_body(servers, body):
    single_url, fleet_url, _, _ = servers
    want_status, _, want = _post(single_url + "/v1/completions", body)
    got_status, _, got = _post(fleet_url + "/v1/completions", body)
    assert 400 <= want_status < 500
    assert (got_status, got) == (want_status, want)


def test_fleet_asks_for_the_api_key_as_the_single_server_does(servers):
    single_url, fleet_url, _, _ = servers
    body = {"model": "lora-qv", "prompt": "x", "max_tokens": 1}
    for key in (None, "wrong-key"):
        want = _post(single_url + "/v1/completions", body, key=key)
        got = _post(fleet_url + "/v1/completions", body, key=key)
        assert want[0] == got[0] == 401 and got[2] == want[2]
    assert _post(fleet_url + "/v1/completions", body)[0] == 200


def test_fleet_routes_an_adapter_to_the_replica_that_holds_it(servers, make_lora):
    _, fleet_url, _, registry = servers
    registry.push(make_lora("affinity", seed=99), name="affinity", task="test", base=servers[2])
    body = {"model": "affinity", "prompt": "affinity", "max_tokens": 2, "temperature": 0}
    _post(fleet_url + "/v1/completions", body)
    time.sleep(1.5)  # the replica reports its adapters to Ray's controller about once a second
    replicas = [_post(fleet_url + "/v1/completions", body)[1]["x-adapterhub-replica"] for _ in range(8)]
    assert len(set(replicas)) == 1, replicas


def test_a_replica_keeps_only_the_adapters_rays_lru_keeps(servers, make_lora):
    """One eviction policy: with room for 4 per replica, 10 adapters (8 LoRAs, 2 soft prompts) sent
    one after another leave every replica's engine holding at most 4 of all kinds together. The
    engine's own caches hold 4 per kind, so without Ray's eviction unloading them a replica that
    got LoRAs and soft prompts would keep more."""
    _, fleet_url, base, registry = servers
    names = [*ADAPTER_SPECS]
    for i in range(6):
        registry.push(make_lora(f"lru{i}", seed=40 + i), name=f"lru{i}", task="test", base=base)
        names.append(f"lru{i}")
    for name in names * 2:
        assert _post(fleet_url + "/v1/completions", {"model": name, "prompt": "x", "max_tokens": 1})[0] == 200
    resident: dict[str, list[str]] = {}
    for _ in range(40):  # /health goes to any replica: ask until both have answered
        with urllib.request.urlopen(fleet_url + "/health", timeout=30) as resp:
            doc = json.loads(resp.read())
            resident[resp.headers["x-adapterhub-replica"]] = [a["ref"] for a in doc["loaded_adapters"]]
        if len(resident) == 2:
            break
    assert len(resident) == 2 and all(len(refs) <= 4 for refs in resident.values()), resident


def test_fleet_refuses_vllm_name_binding_and_oversized_bodies(servers):
    _, fleet_url, _, _ = servers
    status, _, body = _post(fleet_url + "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "lora-qv"})
    assert status == 400 and body["error"]["code"] == "not_supported_by_fleet"
    head, body = announce_body(fleet_url, 20 << 20, b"Authorization: Bearer %s\r\n" % KEY.encode())  # not sent
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"]["code"] == "body_too_large"
    head, body = announce_body(fleet_url, 20 << 20)  # without a key: refused before any of it is read
    assert head.startswith(b"HTTP/1.1 401") and json.loads(body)["error"]["message"]


def _engine_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", ENGINE_PROCESS], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_killed_replica_fails_only_its_requests_retryably_and_is_replaced(servers):
    """16 clients load the fleet; one replica is SIGKILLed. Every request ends (none hangs), every
    failure is a 503 with the API's error body, and answers come from a new replica afterwards."""
    _, fleet_url, base, _ = servers
    duration = float(os.environ.get("ADAPTERHUB_KILL_LOAD_S", "12"))
    models = [*ADAPTER_SPECS, base]
    results: list[tuple[float, float, int, dict, str | None]] = []  # started, ended, status, body, replica
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client(i: int) -> None:
        k = i
        while time.monotonic() < stop_at:
            k += 1
            started = time.monotonic()
            status, headers, body = _post(fleet_url + "/v1/completions", {
                "model": models[k % len(models)], "prompt": PROMPTS[k % 3], "max_tokens": 8, "temperature": 0},
                timeout=90)
            with lock:
                results.append((started, time.monotonic(), status, body, headers.get("x-adapterhub-replica")))

    with cf.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client, i) for i in range(16)]
        time.sleep(min(3.0, duration / 4))
        victims = _engine_pids()
        assert len(victims) == 2
        killed_at = time.monotonic()
        os.kill(victims[0], signal.SIGKILL)
        for f in futures:
            f.result(timeout=duration + 120)  # a hung request would stop here
    before = {r for t, _, _, _, r in results if t < killed_at}
    failures = [(s, b) for _, _, s, b, _ in results if s != 200]
    assert all(s == 503 and b["error"]["code"] == "replica_unavailable" for s, b in failures), failures[:3]
    assert sum(1 for *_, s, _, _ in results if s == 200) > len(failures)
    replaced = [end for t, end, s, _, r in results if s == 200 and t > killed_at and r not in before]
    deadline = time.monotonic() + 120
    while not replaced and time.monotonic() < deadline:  # Ray starts a replacement; it then takes requests
        status, headers, _ = _post(fleet_url + "/v1/completions", {"model": base, "prompt": "x", "max_tokens": 1})
        if status == 200 and headers.get("x-adapterhub-replica") not in before:
            replaced.append(time.monotonic())
    assert replaced, "no replacement replica answered within 120 s"
    print(f"\nkill test: {len(results)} requests in {duration:.0f} s, {len(failures)} failed (503, "
          f"replica_unavailable), a replacement replica answered {min(replaced) - killed_at:.1f} s after the kill")
