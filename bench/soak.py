"""Soak run: good requests mixed with hostile ones against a real ``adapterhub serve``.

The server runs as a subprocess (``python -m adapterhub.cli serve``) on the tiny base, with a
registry of adapters made by PEFT itself and pushed with ``adapterhub push``: two LoRAs, two soft
prompts, and one LoRA whose saved weights are finite but overflow fp32 in the forward pass (its
logits come out NaN). Everything is on 127.0.0.1.

1. **Idle reference.** Every request of the good pool (completions and chat; base, LoRA and soft
   prompt; some streamed; greedy, ``return_token_ids: true``) is sent alone, twice, and its tokens
   recorded: the answer each must get under any load.
2. **Clean run.** The good clients alone (three in four of ``--clients``) for ``--duration`` s.
3. **Mixed run.** The same good clients plus the bad ones (one in four of ``--clients``) for the
   same duration. The bad clients rotate through: bad sampling values (``temperature`` 1e-45,
   ``top_p`` 0, NaN and infinity as literals and as strings, huge ``n``, ``seed`` 2**64-1 with
   ``n`` 2), huge prompts (10 MB of text; 200 prompts x ``n`` 16), clients that disconnect
   mid-stream and mid-non-stream, slow connections (idle sockets, trickled headers, half-sent
   bodies), adapter load/unload churn, the NaN-producing adapter, malformed bodies.

It checks that every good request got exactly its idle tokens (0 wrong answers), that no good
request got a 5xx or went unanswered, that good throughput in the mixed run is at least
``--min-ratio`` of the clean run's, and that the server's RSS (psutil, sampled every 0.5 s) is flat:
the level after the mixed run is within ``--rss-tolerance-mb`` of the level after the clean run.
Every request loop ends by count and by time.

    python bench/soak.py                             # 32 clients, 60 s per run
    python bench/soak.py --clients 8 --duration 10   # a quick look
    python bench/soak.py --json soak.json            # also write the full result

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
USER_KEY = "soak-user-key"
ADMIN_KEY = "soak-admin-key"

# name -> (kind, seed, PEFT config): different ranks, targets and virtual-token counts.
GOOD_ADAPTERS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "lora-qv": ("lora", 21, {}),
    "lora-all": ("lora", 22, {"r": 8, "lora_alpha": 16, "target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}),
    "prompt-4": ("prompt", 23, {"num_virtual_tokens": 4}),
    "prompt-8": ("prompt", 24, {"num_virtual_tokens": 8}),
}
NAN_ADAPTER = "lora-overflow"
# Each of lora_A and lora_B is multiplied by this: both stay finite in the file, but B·A·x is of
# order 1e40, past fp32's 3.4e38, so the layer's output is inf and the next RMSNorm makes it NaN.
OVERFLOW_FACTOR = 1e20


# --- the registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    """What the server serves: a base folder and a registry folder holding the adapters."""

    base: Path
    registry: Path
    adapters: tuple[str, ...]
    nan_adapter: str


def save_peft_adapter(base: Path, out: Path, kind: str, seed: int, **config: Any) -> Path:
    """Save a LoRA (random non-zero B) or a soft prompt with PEFT's own ``save_pretrained``."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if kind == "lora":
        peft_config = LoraConfig(task_type="CAUSAL_LM", **({"r": 4, "lora_alpha": 8, "init_lora_weights": False,
                                                            "target_modules": ["q_proj", "v_proj"]} | config))
    else:
        peft_config = PromptTuningConfig(task_type="CAUSAL_LM", **config)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), peft_config).save_pretrained(out)
    return out


def make_overflowing_lora(base: Path, out: Path, seed: int = 31, factor: float = OVERFLOW_FACTOR) -> Path:
    """A PEFT-saved LoRA whose weights, scaled by ``factor`` in the safetensors file, are finite
    yet push the forward pass past fp32's range: the adapter a server must fail alone."""
    from safetensors.torch import load_file, save_file

    save_peft_adapter(base, out, "lora", seed)
    weights = out / "adapter_model.safetensors"
    tensors = {k: v * factor if "lora_" in k else v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``adapterhub ARGS`` the way a user does; a failure raises with the command's own message."""
    done = subprocess.run([sys.executable, "-m", "adapterhub.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if done.returncode != 0:
        raise RuntimeError(f"adapterhub {args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def build_fixture(workdir: Path, base: Path | None = None) -> Fixture:
    """The tiny base (built unless given), the good adapters and the overflowing one, pushed with
    ``adapterhub push`` into a fresh registry under ``workdir``."""
    from adapterhub.tinybase import build_tiny_base

    base = base or build_tiny_base(workdir / "base")
    registry = workdir / "registry"
    folders = {name: save_peft_adapter(base, workdir / "adapters" / name, kind, seed, **config)
               for name, (kind, seed, config) in GOOD_ADAPTERS.items()}
    folders[NAN_ADAPTER] = make_overflowing_lora(base, workdir / "adapters" / NAN_ADAPTER)
    for name, folder in folders.items():
        cli("push", str(folder), "--name", name, "--task", "soak", "--base", str(base), "--registry", str(registry))
    return Fixture(base, registry, tuple(GOOD_ADAPTERS), NAN_ADAPTER)


# --- the server ------------------------------------------------------------------------------------


class Server:
    """``adapterhub serve`` in a subprocess on a free loopback port, with an API key and an admin
    key (the good clients send the first, the churn mostly the second, the bad ones any or none);
    its log goes to a file."""

    user_key = USER_KEY
    admin_key = ADMIN_KEY

    def __init__(self, fixture: Fixture, log_path: Path, threads: int, extra_args: tuple[str, ...] = ()) -> None:
        cmd = ["serve", "--base", str(fixture.base), "--registry", str(fixture.registry), "--quantize", "none",
               "--device", "cpu", "--host", HOST, "--port", "0", "--threads", str(threads),
               "--api-key", self.user_key, "--admin-api-key", self.admin_key]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "adapterhub.cli", *cmd, *extra_args], cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
        self.port = self._wait_for_port()
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_for_port(self) -> int:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.write(line)
            found = re.search(r" on http://[\d.]+:(\d+)", line)
            if found:
                return int(found.group(1))
        self.log.flush()
        raise RuntimeError(f"the server did not start (exit {self.proc.wait()}); see {self.log.name}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.write(line)

    @staticmethod
    def headers(key: str | None) -> dict[str, str]:
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


# --- plain HTTP --------------------------------------------------------------------------------------


def send(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str],
         timeout: float) -> tuple[int, bytes]:
    """One request on its own connection; returns (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def dumps(body: Any) -> bytes:
    """JSON as a hostile client may write it: NaN and Infinity literals allowed, surrogates escaped."""
    return json.dumps(body, allow_nan=True).encode()


# --- good requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoodRequest:
    label: str
    path: str
    body: dict[str, Any]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


_PROMPTS = ("The quick brown fox", "Once upon a time, in a land far away,", "def fibonacci(n):")


def good_pool(models: list[str]) -> list[GoodRequest]:
    """Completions (text, token ids, two prompts at once, streamed) and chat (plain and streamed)
    for every model: greedy, with token ids returned, lengths from 8 to 24 tokens."""
    pool = []
    for i, model in enumerate(models):
        common = {"model": model, "temperature": 0, "return_token_ids": True}
        prompt = _PROMPTS[i % len(_PROMPTS)]
        pool += [
            GoodRequest(f"{model}/completion", "/v1/completions", {**common, "prompt": prompt, "max_tokens": 16}),
            GoodRequest(f"{model}/completion-ids", "/v1/completions",
                        {**common, "prompt": list(prompt.encode()), "max_tokens": 8}),
            GoodRequest(f"{model}/completion-2-prompts", "/v1/completions",
                        {**common, "prompt": [prompt, _PROMPTS[(i + 1) % len(_PROMPTS)]], "max_tokens": 12}),
            GoodRequest(f"{model}/completion-stream", "/v1/completions",
                        {**common, "prompt": prompt, "max_tokens": 24, "stream": True}),
            GoodRequest(f"{model}/chat", "/v1/chat/completions",
                        {**common, "messages": [{"role": "user", "content": prompt}], "max_tokens": 12}),
            GoodRequest(f"{model}/chat-stream", "/v1/chat/completions",
                        {**common, "messages": [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": prompt}],
                         "max_tokens": 20, "stream": True}),
        ]
    return pool


@dataclass
class Answer:
    status: int
    tokens: list[list[int]] | None = None  # per choice, in index order
    error: str | None = None


def _sse_tokens(resp: http.client.HTTPResponse) -> Answer:
    by_choice: dict[int, list[int]] = {}
    for raw in iter(resp.readline, b""):
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            return Answer(resp.status, [by_choice[i] for i in sorted(by_choice)])
        chunk = json.loads(data)
        if "error" in chunk:
            return Answer(resp.status, error=f"stream error: {json.dumps(chunk['error'])[:200]}")
        for choice in chunk.get("choices", []):
            by_choice.setdefault(choice["index"], []).extend(choice.get("token_ids", []))
    return Answer(resp.status, error="stream ended without [DONE]")


class Client:
    """One keep-alive connection, reopened after any failure."""

    def __init__(self, port: int, headers: dict[str, str], timeout: float) -> None:
        self.port, self.headers, self.timeout = port, headers, timeout
        self.conn: http.client.HTTPConnection | None = None

    def ask(self, req: GoodRequest) -> Answer:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        try:
            self.conn.request("POST", req.path, dumps(req.body), self.headers)
            resp = self.conn.getresponse()
            if resp.status == 200 and req.stream:
                return _sse_tokens(resp)
            payload = resp.read()
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.close()
            return Answer(0, error=f"{type(e).__name__}: {e}"[:200])
        if resp.status != 200:
            return Answer(resp.status, error=payload[:200].decode(errors="replace"))
        choices = sorted(json.loads(payload)["choices"], key=lambda c: c["index"])
        return Answer(200, [c["token_ids"] for c in choices])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def record_idle(server: Server, pool: list[GoodRequest], timeout: float) -> dict[str, list[list[int]]]:
    """Each good request alone, twice: the tokens it must get under load (and proof they are stable)."""
    client = Client(server.port, server.headers(server.user_key), timeout)
    expected = {}
    for req in pool:
        first, second = client.ask(req), client.ask(req)
        if first.tokens is None or first.tokens != second.tokens:
            raise RuntimeError(f"idle server: {req.label} gave {first} then {second}")
        expected[req.label] = first.tokens
    client.close()
    return expected


# --- bad requests ------------------------------------------------------------------------------------


@dataclass
class BadContext:
    server: Server
    models: list[str]
    nan_adapter: str
    deadline: float
    slow_sockets: int
    slow_hold_s: float
    timeout: float
    server_errors: list[str] = field(default_factory=list)  # the bad requests that got a 5xx, to report

    def post(self, path: str, body: bytes, key: str | None, timeout: float | None = None) -> str:
        """Send and report the status, or how the connection ended."""
        try:
            status, answer = send(self.server.port, "POST", path, body, self.server.headers(key),
                                  timeout or self.timeout)
        except (OSError, http.client.HTTPException) as e:
            return type(e).__name__
        if status >= 500:
            self.server_errors.append(f"POST {path} {len(body)} bytes {body[:100]!r} -> {status} {answer[:150]!r}")
        return str(status)

    def key(self, rng: random.Random) -> str | None:
        """Mostly the user key; now and then none or a wrong one (401s must not cost anyone)."""
        return rng.choice([self.server.user_key] * 6 + [None, "wrong-key"])


def _completion(ctx: BadContext, rng: random.Random, **fields: Any) -> dict[str, Any]:
    return {"model": rng.choice(ctx.models), "prompt": rng.choice(_PROMPTS), "max_tokens": 16, **fields}


_BAD_SAMPLING: tuple[dict[str, Any], ...] = (
    {"temperature": 1e-45}, {"temperature": 1e-45, "top_p": 0.5}, {"top_p": 0}, {"top_p": 1e-45},
    {"temperature": float("nan")}, {"temperature": float("inf")}, {"top_p": float("-inf")},
    {"temperature": "NaN"}, {"top_p": "Infinity"}, {"temperature": -1}, {"temperature": 1e308},
    {"n": 10**9}, {"n": 16, "max_tokens": 10**9}, {"seed": 2**64 - 1, "n": 2, "temperature": 1},
    {"seed": -(2**200)}, {"max_tokens": -5}, {"max_tokens": 0}, {"stop": [""] * 100}, {"stop": ["x" * 100_000]},
)


def bad_sampling(ctx: BadContext, rng: random.Random) -> str:
    fields = rng.choice(_BAD_SAMPLING) | ({"stream": True} if rng.random() < 0.3 else {})
    return ctx.post("/v1/completions", dumps(_completion(ctx, rng, **fields)), ctx.key(rng))


@functools.lru_cache(maxsize=None)
def _huge_body(choice: int, model: str) -> bytes:
    """Encoded once per model: the client threads share the harness's CPU with the server."""
    if choice == 0:  # 10 MB of text
        return dumps({"model": model, "prompt": "a" * 10_000_000, "max_tokens": 16})
    if choice == 1:
        return dumps({"model": model, "messages": [{"role": "user", "content": "b" * 10_000_000}]})
    if choice == 2:  # 4.6 KB asking for 3,200 generations
        return dumps({"model": model, "prompt": ["tell me a story " + str(i) for i in range(200)], "n": 16})
    return dumps({"model": model, "prompt": [65] * 500_000})  # half a million token ids


def bad_huge_prompt(ctx: BadContext, rng: random.Random) -> str:
    choice = rng.randrange(4)
    path = "/v1/chat/completions" if choice == 1 else "/v1/completions"
    return ctx.post(path, _huge_body(choice, rng.choice(ctx.models)), ctx.key(rng))


def _open(ctx: BadContext) -> socket.socket:
    return socket.create_connection((HOST, ctx.server.port), timeout=ctx.timeout)


def _request_bytes(ctx: BadContext, path: str, body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json",
            f"Content-Length: {len(body)}"]
    head.append(f"Authorization: Bearer {ctx.server.user_key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def bad_disconnect(ctx: BadContext, rng: random.Random) -> str:
    """Ask for long answers, then go away: mid-stream after the first event, or mid-wait."""
    stream = rng.random() < 0.5
    body = dumps(_completion(ctx, rng, max_tokens=400, n=rng.choice([1, 4]), stream=stream))
    with _open(ctx) as sock:
        sock.sendall(_request_bytes(ctx, "/v1/completions", body))
        if stream:
            sock.recv(1024)  # status line and the first event, or an error
        else:
            time.sleep(rng.uniform(0.05, 0.5))
    return "disconnected-stream" if stream else "disconnected-wait"


def bad_slow(ctx: BadContext, rng: random.Random) -> str:
    """Hold ``slow_sockets`` connections open: idle, trickling headers, or with half a body."""
    mode = rng.choice(["idle", "headers", "half-body"])
    request = _request_bytes(ctx, "/v1/completions", dumps(_completion(ctx, rng)))
    split = request.index(b"\r\n\r\n") + 4 + 10 if mode == "half-body" else 0
    socks = []
    try:
        for _ in range(ctx.slow_sockets):
            sock = _open(ctx)
            socks.append(sock)
            if mode == "half-body":
                sock.sendall(request[:split])
        end = min(time.monotonic() + ctx.slow_hold_s, ctx.deadline)
        sent = 0
        while time.monotonic() < end:
            if mode == "headers":  # one byte per socket every half second: headers never end
                for sock in socks:
                    sock.sendall(request[sent:sent + 1])
                sent += 1
            time.sleep(0.5)
    except OSError as e:
        return f"slow-{mode}-{type(e).__name__}"
    finally:
        for sock in socks:
            sock.close()
    return f"slow-{mode}"


def bad_churn(ctx: BadContext, rng: random.Random) -> str:
    """Load and unload adapters others are using (with the admin key when there is one)."""
    action = rng.choice(["load", "unload"])
    model = rng.choice([m for m in ctx.models if m != ctx.models[0]] + [ctx.nan_adapter, "no-such-adapter"])
    key = rng.choice([ctx.server.admin_key] * 4 + [ctx.server.user_key, None])
    return ctx.post(f"/v1/adapters/{action}", dumps({"model": model}), key)


def bad_nan_adapter(ctx: BadContext, rng: random.Random) -> str:
    if rng.random() < 0.5:
        body = _completion(ctx, rng, model=ctx.nan_adapter, stream=rng.random() < 0.5)
        return ctx.post("/v1/completions", dumps(body), ctx.key(rng))
    body = {"model": ctx.nan_adapter, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    return ctx.post("/v1/chat/completions", dumps(body), ctx.key(rng))


_MALFORMED: tuple[bytes, ...] = (
    b"{", b"not json", b"[" * 100_000 + b"]" * 100_000, b'{"model": "lora-qv", "prompt": "\\ud800"}',
    b'{"model": "x@\xc2\xb2", "prompt": "hi"}', b'{"model": "lora-qv", "prompt": "hi", "max_tokens": ' + b"9" * 5000
    + b"}", b'{"model": {"a": [1, {"b": null}]}, "prompt": "hi"}', b"\xff\xfe\x00garbage",
    b'{"model": "lora-qv", "prompt": [[1, 2], [3, [4]]]}', b'{"model": "lora-qv", "messages": [{"role": "user"}]}',
)


def bad_malformed(ctx: BadContext, rng: random.Random) -> str:
    path = rng.choice(["/v1/completions", "/v1/chat/completions", "/v1/adapters/load"])
    return ctx.post(path, rng.choice(_MALFORMED), ctx.key(rng))


BAD_KINDS: dict[str, Callable[[BadContext, random.Random], str]] = {
    "sampling": bad_sampling, "huge_prompt": bad_huge_prompt, "disconnect": bad_disconnect, "slow": bad_slow,
    "churn": bad_churn, "nan_adapter": bad_nan_adapter, "malformed": bad_malformed,
}


# --- the runs ------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    good_clients: int
    bad_clients: int
    wall_s: float = 0.0
    good_ok: int = 0
    good_tokens: int = 0
    wrong: int = 0
    server_errors: int = 0
    lost: int = 0  # no answer, a 4xx, or an error event
    latencies: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    bad: Counter = field(default_factory=Counter)
    bad_5xx: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "good_clients": self.good_clients, "bad_clients": self.bad_clients, "wall_s": round(self.wall_s, 1),
            "good_requests_ok": self.good_ok, "good_wrong_answers": self.wrong,
            "good_5xx": self.server_errors, "good_lost": self.lost,
            "good_requests_per_s": round(self.good_ok / self.wall_s, 2) if self.wall_s else 0.0,
            "good_tokens_per_s": round(self.good_tokens / self.wall_s, 1) if self.wall_s else 0.0,
            "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
            "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
            "bad_requests": sum(self.bad.values()),
            "bad_by_kind": dict(sorted(sum((Counter({k: n}) for (k, _), n in self.bad.items()), Counter()).items())),
            "bad_outcomes": {f"{k} -> {o}": n for (k, o), n in sorted(self.bad.items())},
            "problem_samples": self.samples[:10],
            "bad_requests_5xx": len(self.bad_5xx),
            "bad_5xx_samples": list({re.sub(r"\d+", "N", x.split(" -> ", 1)[1][:80]): x for x in self.bad_5xx}.values()),
        }


def _good_client(server: Server, pool: list[GoodRequest], expected: dict[str, list[list[int]]], offset: int,
                 deadline: float, max_requests: int, timeout: float, result: PhaseResult, lock: threading.Lock) -> None:
    client = Client(server.port, server.headers(server.user_key), timeout)
    for i in range(max_requests):
        if time.monotonic() >= deadline:
            break
        req = pool[(offset + i) % len(pool)]
        started = time.monotonic()
        answer = client.ask(req)
        took = time.monotonic() - started
        with lock:
            if answer.status >= 500:
                result.server_errors += 1
                result.samples.append(f"{req.label}: HTTP {answer.status} {answer.error}")
            elif answer.tokens is None:
                result.lost += 1
                result.samples.append(f"{req.label}: HTTP {answer.status} {answer.error}")
            elif answer.tokens != expected[req.label]:
                result.wrong += 1
                result.samples.append(f"{req.label}: got {answer.tokens}, idle server gave {expected[req.label]}")
            else:
                result.good_ok += 1
                result.good_tokens += sum(map(len, answer.tokens))
                result.latencies.append(took)
    client.close()


def _bad_client(ctx: BadContext, offset: int, max_requests: int, result: PhaseResult, lock: threading.Lock) -> None:
    rng = random.Random(offset)
    kinds = list(BAD_KINDS)
    for i in range(max_requests):
        if time.monotonic() >= ctx.deadline:
            break
        kind = kinds[(offset + i) % len(kinds)]
        try:
            outcome = BAD_KINDS[kind](ctx, rng)
        except (OSError, http.client.HTTPException) as e:
            outcome = type(e).__name__
        with lock:
            result.bad[(kind, outcome)] += 1


def run_phase(name: str, server: Server, pool: list[GoodRequest], expected: dict[str, list[list[int]]],
              models: list[str], nan_adapter: str, good_clients: int, bad_clients: int,
              args: argparse.Namespace) -> PhaseResult:
    """``good_clients`` + ``bad_clients`` threads for ``args.duration`` s; each finishes the request
    it started before the deadline, so wall time runs to the last good answer."""
    result = PhaseResult(name, good_clients, bad_clients)
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + args.duration
    max_requests = int(args.duration * 100) + 1  # far above what a client can send: time ends the loop
    ctx = BadContext(server, models, nan_adapter, deadline, args.slow_sockets, args.slow_hold, args.timeout)
    good = [threading.Thread(target=_good_client, args=(server, pool, expected, c * 7, deadline, max_requests,
                                                        args.timeout, result, lock)) for c in range(good_clients)]
    bad = [threading.Thread(target=_bad_client, args=(ctx, c, max_requests, result, lock), daemon=True)
           for c in range(bad_clients)]
    for t in good + bad:
        t.start()
    for t in good:
        t.join()
    result.wall_s = time.monotonic() - start
    for t in bad:
        t.join(timeout=args.timeout + 5)
    result.bad_5xx = list(ctx.server_errors)
    return result


class RssSampler:
    """The server's RSS every ``interval`` s, labelled with the phase running."""

    def __init__(self, server: Server, interval: float = 0.5) -> None:
        self.server, self.interval = server, interval
        self.phase = "idle"
        self.samples: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.interval):
            try:
                self.samples.append((time.monotonic(), self.phase, self.server.rss()))
            except psutil.NoSuchProcess:  # the server died: the run reports it
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def of(self, phase: str) -> list[tuple[float, int]]:
        return [(t, rss) for t, p, rss in self.samples if p == phase]


def _mb(n: float) -> float:
    return round(n / 1e6, 1)


def _slope_mb_per_min(points: list[tuple[float, int]]) -> float:
    if len(points) < 2:
        return 0.0
    ts = [t for t, _ in points]
    mean_t, mean_r = statistics.fmean(ts), statistics.fmean(r for _, r in points)
    var = sum((t - mean_t) ** 2 for t in ts)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in points)
    return round(cov / var * 60 / 1e6, 1) if var else 0.0


def rss_report(sampler: RssSampler) -> dict[str, Any]:
    """Per phase: first, peak, last, slope; and the level after each run (median of its last 5 s)."""
    out: dict[str, Any] = {}
    for phase in ("clean", "mixed", "after"):
        points = sampler.of(phase)
        if points:
            out[phase] = {"start_mb": _mb(points[0][1]), "peak_mb": _mb(max(r for _, r in points)),
                          "end_mb": _mb(points[-1][1]), "slope_mb_per_min": _slope_mb_per_min(points)}
    for phase in ("clean", "after"):
        points = sampler.of(phase)
        if points:
            out[f"level_{phase}_mb"] = _mb(statistics.median(r for _, r in points[-10:]))
    return out


def _health_seconds(server: Server, timeout: float) -> float | None:
    started = time.monotonic()
    try:
        status, _ = send(server.port, "GET", "/health", None, {}, timeout)
    except (OSError, http.client.HTTPException):
        return None
    return round(time.monotonic() - started, 3) if status == 200 else None


def run_soak(fixture: Fixture, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, record the idle answers, run clean then mixed, and judge."""
    bad_clients = args.clients // 4
    good_clients = args.clients - bad_clients
    server = Server(fixture, workdir / "server.log", threads=args.clients + 16, extra_args=tuple(args.server_arg))
    sampler = None
    try:
        status, body = send(server.port, "GET", "/v1/models", None, server.headers(server.user_key), args.timeout)
        base_name = json.loads(body)["data"][0]["id"]
        models = [base_name, *fixture.adapters]
        pool = good_pool(models)
        expected = record_idle(server, pool, args.timeout)
        sampler = RssSampler(server)
        phases = {}
        for name, bad in (("clean", 0), ("mixed", bad_clients)):
            sampler.phase = name
            phases[name] = run_phase(name, server, pool, expected, models, fixture.nan_adapter, good_clients, bad,
                                     args)
            print(json.dumps({name: phases[name].summary()}), file=sys.stderr, flush=True)
        sampler.phase = "after"
        time.sleep(args.settle)
        health_s = _health_seconds(server, args.timeout)
        sampler.stop()
        alive = server.proc.poll() is None
    finally:
        if sampler is not None:
            sampler.stop()
        server.close()
    clean, mixed = phases["clean"], phases["mixed"]
    ratio = mixed.good_tokens / mixed.wall_s / (clean.good_tokens / clean.wall_s) if clean.good_tokens else 0.0
    rss = rss_report(sampler)
    growth = rss.get("level_after_mb", 0.0) - rss.get("level_clean_mb", 0.0)
    checks = {
        "no_wrong_answers": clean.wrong == 0 and mixed.wrong == 0,
        "no_5xx_for_good_requests": clean.server_errors == 0 and mixed.server_errors == 0,
        "no_good_request_lost": clean.lost == 0 and mixed.lost == 0,
        "throughput_ratio_ok": ratio >= args.min_ratio,
        "rss_flat": growth <= args.rss_tolerance_mb,
        "server_alive_and_healthy": alive and health_s is not None,
    }
    return {
        "config": {"clients": args.clients, "good_clients": good_clients, "bad_clients": bad_clients,
                   "duration_s": args.duration, "good_pool": len(pool), "models": models,
                   "bad_kinds": list(BAD_KINDS),
                   "server_args": list(args.server_arg), "cpus": os.cpu_count()},
        "clean": clean.summary(), "mixed": mixed.summary(),
        "throughput_ratio_mixed_vs_clean": round(ratio, 3),
        "rss": rss | {"growth_after_mixed_mb": round(growth, 1)},
        "health_after_s": health_s,
        "checks": checks,
        "passed": all(checks.values()),
    }


def _print_summary(result: dict[str, Any]) -> None:
    c, m = result["clean"], result["mixed"]
    print(f"soak: {result['config']['good_clients']} good + {result['config']['bad_clients']} bad clients, "
          f"{result['config']['duration_s']:g} s per run")
    for name, r in (("clean", c), ("mixed", m)):
        print(f"  {name:5}: {r['good_requests_ok']} good answers ({r['good_requests_per_s']}/s, "
              f"{r['good_tokens_per_s']} tok/s, p50 {r['latency_p50_s']} s, p95 {r['latency_p95_s']} s); "
              f"wrong {r['good_wrong_answers']}, 5xx {r['good_5xx']}, lost {r['good_lost']}; "
              f"bad requests {r['bad_requests']}")
    print(f"  throughput mixed/clean: {result['throughput_ratio_mixed_vs_clean']}")
    print(f"  rss: {json.dumps(result['rss'])}")
    print(f"  /health after: {result['health_after_s']} s")
    for name, ok in result["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'} {name}")
    for sample in m["problem_samples"] + c["problem_samples"]:
        print(f"    {sample}")
    print(f"  bad requests answered 5xx (not a check of this run; every one is a bug): {m['bad_requests_5xx']}")
    for sample in m["bad_5xx_samples"]:
        print(f"    {sample}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="all clients of the mixed run; one in four is bad")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each run (clean, mixed)")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout of every request")
    parser.add_argument("--slow-sockets", type=int, default=16, help="connections one slow client holds")
    parser.add_argument("--slow-hold", type=float, default=5.0, help="seconds a slow client holds them")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the mixed run before the last RSS")
    parser.add_argument("--min-ratio", type=float, default=0.8, help="good throughput, mixed over clean")
    parser.add_argument("--rss-tolerance-mb", type=float, default=100.0, help="allowed RSS growth after the mixed run")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `adapterhub serve` argument")
    parser.add_argument("--json", type=Path, default=None, help="also write the full result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        fixture = build_fixture(Path(tmp))
        result = run_soak(fixture, Path(tmp), args)
        if not result["passed"]:
            log = (Path(tmp) / "server.log").read_text(errors="replace")
            print(log[-3000:], file=sys.stderr)
    _print_summary(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
