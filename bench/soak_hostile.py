"""The hostile clients of the soak (bench/soak.py): every attack of tests/test_hostile_clients.py,
tests/test_hub_hardening.py and tests/test_http_fuzz.py (and issue 12's), each as a loop.

They run in a process of their own (``run_hostile``), so their Python work (encoding 15 MB bodies,
parsing answers) never holds the GIL of the well-behaved clients whose latency the soak measures.
Each kind is a function ``(Hostile, Random) -> [outcome, ...]``: an outcome is the status answered
or what the connection did. A request that was sent whole and got a 5xx or no answer at all is a
failure, and so are the regressions the hardening tests pin: an echo that is not bounded, a second
request answered after an ambiguously framed one, a Hugging Face commit answered 200 whose change
is not on ``main``.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

TESTS = Path(__file__).resolve().parent.parent / "tests"
HOST = "127.0.0.1"
HUGE_MODEL_CHARS = (1_000_000, 15_000_000)  # the test's hostile name, and the probe's 15 MB one
MAX_ECHO_BYTES = 2000  # what tests/test_hostile_clients.py allows an error quoting a huge string


@dataclass(frozen=True)
class Target:
    """What the hostile process needs to reach the server (plain values: it crosses a process)."""

    port: int
    user_key: str
    admin_key: str
    write_token: str
    base_name: str
    adapters: tuple[str, ...]
    nan_adapter: str
    race_repo: str
    adapter_folder: str  # a PEFT folder, for /v1/load_lora_adapter by path
    timeout: float = 60.0
    slow_sockets: int = 16
    hold_s: float = 5.0
    idle_connections: int = 256

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass
class Hostile:
    """One kind's loop state, shared by its threads: counts, failures, the deadline."""

    target: Target
    deadline: float  # time.time(): the clock two processes share
    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, kind: str, what: str) -> None:
        with self.lock:
            self.failures.append(f"{kind}: {what}"[:600])

    def headers(self, key: str | None, content_type: str = "application/json") -> dict[str, str]:
        return {"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}

    def key(self, rng: random.Random) -> str | None:
        """Mostly the user key; now and then none or a wrong one (401s must cost no one). Only on
        small bodies: a large one refused from its headers is reset while still being sent, which
        would read as an unanswered request."""
        return rng.choice([self.target.user_key] * 6 + [None, "wrong-key"])

    def request(self, kind: str, method: str, path: str, body: bytes | None, key: str | None,
                *, bounded_echo: bool = False) -> str:
        """One whole request on its own connection: its status. A 5xx, no answer, or (with
        ``bounded_echo``) an answer longer than ``MAX_ECHO_BYTES`` is a failure."""
        conn = http.client.HTTPConnection(HOST, self.target.port, timeout=self.target.timeout)
        try:
            conn.request(method, path, body, self.headers(key))
            resp = conn.getresponse()
            answer = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.fail(kind, f"{method} {path[:100]} ({len(body or b'')} bytes {(body or b'')[:80]!r}): "
                            f"no answer: {type(e).__name__}: {e}")
            return "no-answer"
        finally:
            conn.close()
        if resp.status >= 500:
            self.fail(kind, f"{method} {path[:100]} ({len(body or b'')} bytes {(body or b'')[:80]!r}) -> "
                            f"{resp.status} {answer[:200]!r}")
        if bounded_echo and len(answer) > MAX_ECHO_BYTES:
            self.fail(kind, f"{method} {path[:100]}: a {len(answer)}-byte answer to a huge string")
        return str(resp.status)

    def post(self, kind: str, path: str, doc: Any, key: str | None, **kw: Any) -> str:
        return self.request(kind, "POST", path, dumps(doc), key, **kw)


def dumps(doc: Any) -> bytes:
    """JSON as a hostile client may write it: NaN and Infinity literals allowed, surrogates escaped."""
    return doc if isinstance(doc, bytes) else json.dumps(doc, allow_nan=True).encode()


def _completion(h: Hostile, rng: random.Random, **fields: Any) -> dict[str, Any]:
    models = [h.target.base_name, *h.target.adapters]
    return {"model": rng.choice(models), "prompt": "The quick brown fox", "max_tokens": 8, **fields}


def _open(h: Hostile, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(h.target.timeout)
    sock.connect((HOST, h.target.port))
    return sock


def _raw_post(h: Hostile, path: str, body: bytes) -> bytes:
    from test_hostile_clients import _request

    return _request("POST", path, body, headers=b"Authorization: Bearer %s\r\n" % h.target.user_key.encode())


def _status_of(head: bytes) -> str:
    parts = head.split(b" ", 2)
    return parts[1].decode() if head.startswith(b"HTTP/") and len(parts) > 1 else "no-answer"


# --- the kinds -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _huge_model_body(path: str, chars: int) -> bytes:
    extra = {"/v1/completions": {"prompt": "hi"}, "/v1/chat/completions": {"messages": [
        {"role": "user", "content": "hi"}]}}.get(path, {})
    return dumps({"model": "m" * chars, **extra})


def huge_model(h: Hostile, rng: random.Random) -> list[str]:
    """A model name of 1 MB or 15 MB on completions, chat and adapter load: a bounded 404."""
    path = rng.choice(["/v1/completions", "/v1/chat/completions", "/v1/adapters/load"])
    key = h.target.admin_key if path == "/v1/adapters/load" else h.target.user_key
    return [h.request("huge_model", "POST", path, _huge_model_body(path, rng.choice(HUGE_MODEL_CHARS)), key,
                      bounded_echo=True)]


def half_close(h: Hostile, rng: random.Random) -> list[str]:
    """A whole request, then ``shutdown(SHUT_WR)`` (HTTP/1.0 or 1.1, streamed or not): answered."""
    from test_hostile_clients import _exchange, _final, _request

    stream = rng.random() < 0.5
    body = dumps({"model": h.target.base_name, "prompt": "half", "max_tokens": 4, "temperature": 0, "stream": stream})
    data = _request("POST", "/v1/completions", body, rng.choice(["1.0", "1.1"]),
                    b"Authorization: Bearer %s\r\n" % h.target.user_key.encode())
    answer, closed = _exchange(h.target.port, data, half_close=True, timeout=h.target.timeout)
    if not answer:
        h.fail("half_close", f"no answer to a half-closed {'stream' if stream else 'request'}")
        return ["no-answer"]
    status, content = _final(answer)
    whole = b"data: [DONE]" in content if stream else b'"choices"' in content
    if status >= 500 or (status == 200 and not whole) or not closed:
        h.fail("half_close", f"half-closed: HTTP {status}, closed {closed}, body {content[-200:]!r}")
    return [str(status)]


def framing(h: Hostile, rng: random.Random) -> list[str]:
    """Both Content-Length and Transfer-Encoding, two lengths, obs-fold... with a request behind:
    refused, the connection closed, the second request never answered."""
    from test_hostile_clients import _BODY, _FRAMINGS, _exchange, _final, _request

    path = rng.choice(["/v1/completions", "/api/versions"])
    case = rng.choice([*_FRAMINGS, "http-1.0-chunked"])
    if case == "http-1.0-chunked":
        data = (b"POST %s HTTP/1.0\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%s"
                % (path.encode(), len(_BODY), _BODY))
    else:
        data = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % path.encode()
                + _FRAMINGS[case][0])
    expected = _FRAMINGS[case][1] if case in _FRAMINGS else 400  # 501 for a coding waitress cannot decode
    answer, closed = _exchange(h.target.port, data + _request("GET", "/health"), timeout=h.target.timeout)
    if not answer:
        h.fail("framing", f"{case} on {path}: no answer")
        return ["no-answer"]
    status, _ = _final(answer)
    if (status >= 500 and status != expected) or answer.count(b"HTTP/1.") > 1 or not closed:
        h.fail("framing", f"{case} on {path}: HTTP {status}, {answer.count(b'HTTP/1.')} answers, closed {closed}")
    return [f"{status} (expected)" if status == expected else str(status)]


def slowloris(h: Hostile, rng: random.Random) -> list[str]:
    """``slow_sockets`` connections held ``hold_s``: idle, trickling headers, or half a body; or a
    100 MB body announced and never sent (refused from its Content-Length at once)."""
    mode = rng.choice(["idle", "headers", "half-body", "announce"])
    if mode == "announce":
        from serving_helpers import announce_body

        head, _ = announce_body(h.target.url, 100 << 20, b"Authorization: Bearer %s\r\n" % h.target.user_key.encode(),
                                timeout=h.target.timeout)
        status = _status_of(head)
        if status == "no-answer" or status.startswith("5"):
            h.fail("slowloris", f"100 MB announced: {head[:200]!r}")
        return [status]
    request = _raw_post(h, "/v1/completions", dumps(_completion(h, rng)))
    split = request.index(b"\r\n\r\n") + 4 + 10 if mode == "half-body" else 0
    socks: list[socket.socket] = []
    try:
        for _ in range(h.target.slow_sockets):
            socks.append(_open(h))
            if mode == "half-body":
                socks[-1].sendall(request[:split])
        end = min(time.time() + h.target.hold_s, h.deadline)
        sent = 0
        while time.time() < end:
            if mode == "headers":  # one byte per socket every half second: the headers never end
                for sock in socks:
                    sock.sendall(request[sent:sent + 1])
                sent += 1
            time.sleep(0.5)
    except OSError as e:
        return [f"{mode}-{type(e).__name__}"]
    finally:
        for sock in socks:
            sock.close()
    return [mode]


def never_read(h: Hostile, rng: random.Random) -> list[str]:
    """Four streams of 400 tokens on a 4 KB receive buffer, never read for ``hold_s``, then closed."""
    body = dumps(_completion(h, rng, max_tokens=400, stream=True, temperature=0))
    socks = [_open(h, rcvbuf=4096) for _ in range(4)]
    try:
        for sock in socks:
            sock.sendall(_raw_post(h, "/v1/completions", body))
        time.sleep(max(0.0, min(h.target.hold_s, h.deadline - time.time())))
        outcomes = []
        for sock in socks:
            status = _status_of(sock.recv(64))
            if status == "no-answer" or status.startswith("5"):
                h.fail("never_read", f"a stream unread for {h.target.hold_s} s: {status}")
            outcomes.append(status)
        return outcomes
    finally:
        for sock in socks:
            sock.close()


def cancel_storm(h: Hostile, rng: random.Random) -> list[str]:
    """Eight long requests at once (streams read to their first bytes, or answers waited on for a
    moment), then every connection dropped."""
    stream = rng.random() < 0.5
    body = dumps(_completion(h, rng, max_tokens=400, n=rng.choice([1, 4]), stream=stream))
    socks = [_open(h) for _ in range(8)]
    outcomes = []
    try:
        for sock in socks:
            sock.sendall(_raw_post(h, "/v1/completions", body))
        if not stream:
            time.sleep(rng.uniform(0.05, 0.5))
            return ["dropped-waiting"] * len(socks)
        for sock in socks:
            status = _status_of(sock.recv(1024))
            if status == "no-answer" or status.startswith("5"):
                h.fail("cancel_storm", f"a stream got {status}")
            outcomes.append(status)
        return outcomes
    finally:
        for sock in socks:
            sock.close()


def adapter_races(h: Hostile, rng: random.Random) -> list[str]:
    """Load and unload the adapters the good clients use, by both APIs (ours and vLLM's), with the
    admin key mostly; served names point at registry references or at a PEFT folder."""
    t = h.target
    key = rng.choice([t.admin_key] * 4 + [t.user_key, None])
    adapter = rng.choice([*t.adapters, t.nan_adapter, "no-such-adapter"])
    name = f"race-{rng.randrange(4)}"
    action = rng.randrange(4)
    if action == 0:
        return [h.post("adapter_races", "/v1/adapters/load", {"model": adapter}, key)]
    if action == 1:
        return [h.post("adapter_races", "/v1/adapters/unload", {"model": adapter}, key)]
    if action == 2:
        path = t.adapter_folder if rng.random() < 0.1 else f"{rng.choice(t.adapters)}@1"
        return [h.post("adapter_races", "/v1/load_lora_adapter",
                       {"lora_name": name, "lora_path": path, "load_inplace": rng.random() < 0.5}, key)]
    return [h.post("adapter_races", "/v1/unload_lora_adapter", {"lora_name": name}, key)]


_METRICS_PATCHES = (b'{"loss": NaN}', b'{"loss": Infinity}', b'{"loss": -Infinity}', b'{"loss": "high"}',
                    b'{"": 1}', b'{"soak": 0.5}')


def metrics_patch(h: Hostile, rng: random.Random) -> list[str]:
    """NaN, infinite, named-wrong and 900 KB metrics on a version (one in six valid)."""
    ref = f"{rng.choice(h.target.adapters)}@1"
    if rng.random() < 0.2:
        body = dumps({f"m{i}." + "x" * 90: i / 7 for i in range(9000)})
    else:
        body = rng.choice(_METRICS_PATCHES)
    return [h.request("metrics_patch", "PATCH", f"/api/versions/{ref}/metrics", body, h.target.write_token)]


class _HfRace:
    """Two ``create_commit`` calls from the same head at once (with and without ``parent_commit``),
    as tests/test_hub_hardening.py makes them: with it one lands and the other is a 412; without,
    both land. A change answered 200 must be on ``main`` afterwards."""

    def __init__(self, target: Target) -> None:
        from huggingface_hub import HfApi

        self.apis = [HfApi(endpoint=target.url, token=target.write_token) for _ in range(2)]
        self.repo, self.url = target.race_repo, target.url
        self.config = json.loads(self._read("adapter_config.json"))
        self.round = 0

    def _read(self, name: str) -> str:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/{self.repo}/resolve/main/{name}", timeout=60) as r:
            return r.read().decode()

    def __call__(self, h: Hostile, rng: random.Random) -> list[str]:
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.errors import HfHubHTTPError

        self.round += 1
        mode = rng.choice(["parent", "no-parent"])
        head = self.apis[0].model_info(self.repo).sha
        readme, alpha = f"{mode} round {self.round}\n", self.round + 1
        edits = [("README.md", readme), ("adapter_config.json", json.dumps(self.config | {"lora_alpha": alpha}))]
        barrier, status = threading.Barrier(2), [0, 0]

        def commit(k: int) -> None:
            path, text = edits[k]
            barrier.wait()
            try:
                self.apis[k].create_commit(self.repo, operations=[CommitOperationAdd(path, text.encode())],
                                           commit_message=f"soak {path} {mode} {self.round}",
                                           parent_commit=head if mode == "parent" else None)
                status[k] = 200
            except HfHubHTTPError as e:
                status[k] = e.response.status_code
            except Exception as e:  # the client failed without an answer: reported as such
                status[k] = -1
                h.fail("hf_commits", f"{mode} commit of {path}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=commit, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        landed = (self._read("README.md") == readme, json.loads(self._read("adapter_config.json"))["lora_alpha"] == alpha)
        expected = [200, 412] if mode == "parent" else [200, 200]
        if sorted(status) != expected or any((s == 200) != ok for s, ok in zip(status, landed)):
            h.fail("hf_commits", f"{mode}: statuses {status} (expected {expected}), changes on main {landed}")
        return [f"{mode}:{s}" for s in status]


_HUGE_STOPS = ({"stop": ["x"] * 10_000}, {"stop": ["y" * 100_000]}, {"stop": [""] * 100}, {"stop": "z" * 1_000_000},
               {"stop": [["nested"]]})


def huge_stop(h: Hostile, rng: random.Random) -> list[str]:
    return [h.post("huge_stop", "/v1/completions", _completion(h, rng) | rng.choice(_HUGE_STOPS), h.target.user_key,
                   bounded_echo=True)]


_DEEP = (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
         b'{"model": "x", "prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
         b'{"model": "x", "messages": [{"role": "user", "content": ' + b"[" * 20_000 + b"]" * 20_000 + b"}]}")


def nested_json(h: Hostile, rng: random.Random) -> list[str]:
    """Deeply nested JSON on the OpenAI, vLLM and hub routes that take a body."""
    method, path, key = rng.choice([
        ("POST", "/v1/completions", h.target.user_key), ("POST", "/v1/chat/completions", h.target.user_key),
        ("POST", "/v1/load_lora_adapter", h.target.admin_key), ("POST", "/api/tags", h.target.write_token),
        ("PATCH", f"/api/versions/{h.target.adapters[0]}@1/metrics", h.target.write_token),
        ("POST", "/api/objects/check", h.target.write_token)])
    return [h.request("nested_json", method, path, rng.choice(_DEEP), key)]


def surrogates(h: Hostile, rng: random.Random) -> list[str]:
    """Lone surrogates, escaped and raw, in prompts, messages, model names and hub paths."""
    model = h.target.adapters[0]
    choice = rng.randrange(5)
    if choice == 0:
        return [h.post("surrogates", "/v1/completions", b'{"model": "%s", "prompt": "\\ud800"}' % model.encode(),
                       h.target.user_key)]
    if choice == 1:
        return [h.post("surrogates", "/v1/chat/completions", {"model": model, "messages": [
            {"role": "user", "content": "a\udfffb"}]}, h.target.user_key)]
    if choice == 2:
        return [h.post("surrogates", "/v1/completions", b'{"model": "\xed\xa0\x80", "prompt": "hi"}', h.target.user_key)]
    if choice == 3:
        return [h.post("surrogates", "/v1/completions", {"model": "x\ud800", "prompt": "hi"}, h.target.user_key)]
    return [h.request("surrogates", "GET", "/api/versions/%ED%A0%80", None, None)]


_TRAVERSALS = (("GET", "/api/objects/sha256/..%2F..%2Fregistry.json"), ("GET", "/api/objects/sha256/../../registry.json"),
               ("GET", "/api/objects/sha256/%2e%2e%2ftokens.json"), ("PUT", "/api/objects/sha256/..%2F..%2Fregistry.json"),
               ("GET", "/{a}/resolve/main/..%2F..%2Fregistry.json"), ("GET", "/{a}/resolve/main/../../tokens.json"),
               ("GET", "/..%2Fhub/resolve/main/registry.json"), ("POST", "/api/adapters/..%2Fevil/versions"),
               ("POST", "/api/adapters/../versions"), ("GET", "/api/versions/..%2F..%2Fregistry.json"),
               ("DELETE", "/api/versions/..%2F{a}@1"), ("GET", "/api/models/{a}/tree/main/..%2F..%2F"))


def traversal(h: Hostile, rng: random.Random) -> list[str]:
    """Dot segments, encoded or not, on the hub routes, with a write token: 4xx, and never a file
    outside the store in the answer."""
    method, path = rng.choice(_TRAVERSALS)
    path = path.format(a=rng.choice(h.target.adapters))
    conn = http.client.HTTPConnection(HOST, h.target.port, timeout=h.target.timeout)
    try:  # http.client sends the path exactly as written: no client-side normalisation of '..'
        conn.request(method, path, b'{"files": []}', h.headers(h.target.write_token))
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as e:
        h.fail("traversal", f"{method} {path}: no answer: {type(e).__name__}")
        return ["no-answer"]
    finally:
        conn.close()
    if resp.status >= 500 or resp.status < 400 or b"schema_version" in body or b'"tokens"' in body:
        h.fail("traversal", f"{method} {path} -> {resp.status} {body[:200]!r}")
    return [str(resp.status)]


def query_tokens(h: Hostile, rng: random.Random) -> list[str]:
    """Credentials in the query string instead of the header: never taken for one."""
    t = h.target
    method, path, body = rng.choice([
        ("PATCH", f"/api/versions/{t.adapters[0]}@1/metrics?token={t.write_token}", b'{"soak": 1}'),
        ("PATCH", f"/api/versions/{t.adapters[0]}@1/metrics?access_token={t.write_token}", b'{"soak": 1}'),
        ("POST", f"/v1/completions?api_key={t.user_key}", dumps({"model": t.base_name, "prompt": "hi", "max_tokens": 1})),
        ("POST", f"/v1/adapters/unload?key={t.admin_key}", dumps({"model": t.adapters[0]})),
        ("GET", "/api/versions?token=garbage", None)])
    status = h.request("query_tokens", method, path, body, None)
    if method != "GET" and status not in ("401", "403"):
        h.fail("query_tokens", f"{method} {path.split('?')[0]} with a token only in the query -> {status}")
    return [status]


_BIASES = ({str(i): 1.0 for i in range(50_000)}, {"١": 1}, {"²": 1}, {"01": 1, "1": 2}, {"-1": 1}, {"1" * 20: 1},
           {"5": float("nan")}, {"5": 1e308})


def logit_bias(h: Hostile, rng: random.Random) -> list[str]:
    return [h.post("logit_bias", "/v1/completions", _completion(h, rng, logit_bias=rng.choice(_BIASES)), h.target.user_key,
                   bounded_echo=True)]


def idle_connections(h: Hostile, rng: random.Random) -> list[str]:
    """``idle_connections`` sockets opened and held ``hold_s`` with nothing sent."""
    socks: list[socket.socket] = []
    try:
        for _ in range(h.target.idle_connections):
            socks.append(_open(h))
        time.sleep(max(0.0, min(2 * h.target.hold_s, h.deadline - time.time())))
    except OSError as e:
        return [f"opened-{len(socks)}-{type(e).__name__}"]
    finally:
        for sock in socks:
            sock.close()
    return [f"held-{len(socks)}"]


_BAD_VALUES: tuple[dict[str, Any] | bytes, ...] = (
    {"temperature": 1e-45}, {"top_p": 0}, {"temperature": float("nan")}, {"temperature": float("inf")},
    {"temperature": "NaN"}, {"top_p": "Infinity"}, {"temperature": -1}, {"n": 10**9}, {"n": 16, "max_tokens": 10**9},
    {"seed": 2**64 - 1, "n": 2, "temperature": 1}, {"seed": -(2**200)}, {"max_tokens": -5}, {"best_of": True},
    {"max_tokens": True}, b'"max_tokens": 1' + b"0" * 5000, b'"frequency_penalty": -1e999', b'"top_p": Infinity',
)


def bad_values(h: Hostile, rng: random.Random) -> list[str]:
    """Numeric edges: non-finite, denormal, huge, 5000-digit, bools for integers."""
    value = rng.choice(_BAD_VALUES)
    doc = _completion(h, rng, stream=rng.random() < 0.3)
    if isinstance(value, bytes):
        body = dumps(doc)[:-1] + b", " + value + b"}"
    else:
        body = dumps(doc | value)
    return [h.post("bad_values", "/v1/completions", body, h.key(rng))]


@functools.lru_cache(maxsize=None)
def _huge_prompt(choice: int, model: str) -> bytes:
    if choice == 0:
        return dumps({"model": model, "prompt": "a" * 10_000_000, "max_tokens": 16})
    if choice == 1:
        return dumps({"model": model, "messages": [{"role": "user", "content": "b" * 10_000_000}]})
    if choice == 2:
        return dumps({"model": model, "prompt": ["tell me a story " + str(i) for i in range(200)], "n": 16})
    return dumps({"model": model, "prompt": [65] * 500_000})


def huge_prompt(h: Hostile, rng: random.Random) -> list[str]:
    """10 MB of text, a 10 MB chat message, 200 prompts x n 16, half a million token ids."""
    choice = rng.randrange(4)
    path = "/v1/chat/completions" if choice == 1 else "/v1/completions"
    return [h.request("huge_prompt", "POST", path, _huge_prompt(choice, rng.choice(h.target.adapters)), h.target.user_key)]


def nan_adapter(h: Hostile, rng: random.Random) -> list[str]:
    """The adapter whose logits are NaN: its own request fails (422), no one else's."""
    if rng.random() < 0.5:
        doc = _completion(h, rng, stream=rng.random() < 0.5) | {"model": h.target.nan_adapter}
        return [h.post("nan_adapter", "/v1/completions", doc, h.target.user_key)]
    doc = {"model": h.target.nan_adapter, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    return [h.post("nan_adapter", "/v1/chat/completions", doc, h.target.user_key)]


def ranges(h: Hostile, rng: random.Random) -> list[str]:
    """One-byte ranges of an adapter's weights through the HF resolve route, anonymously."""
    offset = rng.randrange(1000)
    conn = http.client.HTTPConnection(HOST, h.target.port, timeout=h.target.timeout)
    path = f"/{rng.choice(h.target.adapters)}/resolve/main/adapter_config.json"
    try:
        conn.request("GET", path, headers={"Range": rng.choice([f"bytes={offset}-{offset}", "bytes=-5",
                                                                  "bytes=999999999-", "bytes=5-1"])})
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as e:
        h.fail("ranges", f"GET {path}: no answer: {type(e).__name__}")
        return ["no-answer"]
    finally:
        conn.close()
    if resp.status >= 500:
        h.fail("ranges", f"GET {path} -> {resp.status}")
    return [str(resp.status)]


Kind = Callable[[Hostile, random.Random], list[str]]
# name -> (threads, the loop body or a factory for a stateful one)
KINDS: dict[str, tuple[int, Kind | Callable[[Target], Kind]]] = {
    "huge_model": (1, huge_model), "half_close": (1, half_close), "framing": (1, framing),
    "slowloris": (1, slowloris), "never_read": (1, never_read), "cancel_storm": (1, cancel_storm),
    "adapter_races": (2, adapter_races), "metrics_patch": (1, metrics_patch), "hf_commits": (1, _HfRace),
    "huge_stop": (1, huge_stop), "nested_json": (1, nested_json), "surrogates": (1, surrogates),
    "traversal": (1, traversal), "query_tokens": (1, query_tokens), "logit_bias": (1, logit_bias),
    "idle_connections": (1, idle_connections), "bad_values": (1, bad_values), "huge_prompt": (1, huge_prompt),
    "nan_adapter": (1, nan_adapter), "ranges": (1, ranges),
}
_STATEFUL = {"hf_commits"}


def _loop(name: str, body: Kind, h: Hostile, seed: int) -> None:
    rng = random.Random(seed)
    while time.time() < h.deadline:
        try:
            outcomes = body(h, rng)
        except (OSError, http.client.HTTPException) as e:  # refused or reset before a request was whole
            outcomes = [type(e).__name__]
        except Exception as e:  # the harness's own bug: reported, and the loop goes on
            h.fail(name, f"harness error: {type(e).__name__}: {e}\n{traceback.format_exc()[-600:]}")
            outcomes = ["harness-error"]
        with h.lock:
            h.counts.update((name, o) for o in outcomes)


def run_hostile(target: Target, seconds: float, kinds: list[str], results: Any) -> None:
    """Entry point of the hostile process: every kind's threads for ``seconds``. Puts ``("ready",
    deadline)`` on the ``results`` queue once the loops start (``deadline`` on ``time.time()``), then
    ``{"counts": {kind: {outcome: n}}, "failures": [...], "threads_still_running": n}``."""
    sys.path[:0] = [str(TESTS)]
    for k in [k for k in os.environ if k.startswith("HF_")]:
        del os.environ[k]
    os.environ.update(HF_HUB_OFFLINE="0", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
    import test_hostile_clients  # noqa: F401  (the framing cases and socket helpers, imported before the clock starts)

    try:
        bodies = [(name, i, body(target) if name in _STATEFUL else body)
                  for name in kinds for i, body in enumerate([KINDS[name][1]] * KINDS[name][0])]
    except Exception:  # a stateful kind could not start (the hub did not answer): the soak reports it
        results.put(("error", traceback.format_exc()[-2000:]))
        return
    h = Hostile(target, time.time() + seconds)
    threads = [threading.Thread(target=_loop, args=(name, body, h, 1000 * list(KINDS).index(name) + i), daemon=True)
               for name, i, body in bodies]
    results.put(("ready", h.deadline))
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, h.deadline - time.time() + 2 * target.timeout))
    with h.lock:
        counts: dict[str, dict[str, int]] = {}
        for (name, outcome), n in sorted(h.counts.items()):
            counts.setdefault(name, {})[outcome] = n
        results.put({"counts": counts, "failures": list(h.failures),
                     "threads_still_running": sum(t.is_alive() for t in threads)})
