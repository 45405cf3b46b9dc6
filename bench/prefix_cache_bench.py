"""Prefix caching through ``adapterhub serve``: time to first token and throughput, cache on and off.

Two server processes on one base (``--base``, e.g. the HF copy of SmolLM2-135M-Instruct; default a
random SmolLM2-135M-shaped base with the tiny base's byte tokenizer, which has no chat template, so
the chat phase needs a real base), one with the default ``--prefix-cache-bytes`` and one with ``0``,
idle between phases; every phase runs on both, alternating which goes first. Phases:

* ``template``: a prompt-template adapter with ``--examples`` few-shot pairs; ``--requests``
  completions with different inputs, one at a time, ``max_tokens`` 1 (a request's latency is its
  time to first token): median TTFT of the second and later requests, on over off;
* ``chat``: a ``--turns``-turn chat, each turn's history holding the earlier answers (32 tokens);
  TTFT of every turn (streamed), the last turn's on over off;
* ``shared_system``: ``--clients`` clients, each a few requests with a ``--system-tokens`` system
  prompt in common and its own question, ``--answer-tokens`` tokens each, after one request with
  that system prompt (an application's is hot in steady state): tokens/s on over off;
* ``no_sharing``: the same clients with prompts that share nothing (``cpu_serve_bench``'s shape):
  tokens/s on over off, what the cache costs traffic it cannot help.

The servers' RSS after all phases is reported beside the cache's byte bound.

    python bench/prefix_cache_bench.py --base /path/to/smollm2-hf-copy

Prints JSON lines while it runs and one summary document at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from hetero_lora_bench import build_base, emit  # noqa: E402
from serve_load import ServerProcess, rss_bytes, run_clients  # noqa: E402

from adapterhub.prompt_template import FewShot, PromptTemplate, write_prompt_template  # noqa: E402
from adapterhub.registry import LocalRegistry  # noqa: E402

WORDS = ("river mountain lantern copper violet engine harbor meadow signal orchard candle puzzle marble "
         "thunder pocket silver garden ladder mirror canyon").split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _stream_ttft(server: ServerProcess, path: str, doc: dict[str, Any]) -> tuple[float, str]:
    """Send ``doc`` streamed on a fresh connection: seconds to the first token, and the whole text."""
    conn = http.client.HTTPConnection(*server.url, timeout=600)
    start = time.perf_counter()
    conn.request("POST", path, json.dumps(doc | {"stream": True}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status} {resp.read()[:300]!r}")
    first, parts = None, []
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        choice = json.loads(line[6:])["choices"][0]
        piece = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
        if piece and first is None:  # a chat's first chunk carries only the role
            first = time.perf_counter() - start
        parts.append(piece or "")
    conn.close()
    return (first if first is not None else time.perf_counter() - start), "".join(parts)


def phase_template(servers: dict[str, ServerProcess], args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(1)
    inputs = [_text(rng, 12) for _ in range(args.requests)]
    out: dict[str, Any] = {}
    for name in _order(servers, 0):
        ttfts = []
        for text in inputs:
            t, _ = _stream_ttft(servers[name], "/v1/completions",
                                {"model": "fewshot", "prompt": text, "max_tokens": 1, "temperature": 0})
            ttfts.append(t)
        out[name] = {"first_s": round(ttfts[0], 4), "later_median_s": round(statistics.median(ttfts[1:]), 4)}
    out["later_ttft_on_over_off"] = round(out["on"]["later_median_s"] / out["off"]["later_median_s"], 3)
    emit(phase="template", **out)
    return out


def phase_chat(servers: dict[str, ServerProcess], args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(2)
    questions = [f"Tell me something about {_text(rng, 3)}." for _ in range(args.turns)]
    out: dict[str, Any] = {}
    for name in _order(servers, 1):
        messages: list[dict[str, str]] = [{"role": "system", "content": "You are a friendly, concise assistant."}]
        ttfts = []
        for q in questions:
            messages.append({"role": "user", "content": q})
            t, answer = _stream_ttft(servers[name], "/v1/chat/completions",
                                     {"model": args.model_name, "messages": messages, "max_tokens": 32,
                                      "temperature": 0})
            ttfts.append(round(t, 4))
            messages.append({"role": "assistant", "content": answer})
        out[name] = {"ttft_s": ttfts}
    out["last_turn_on_over_off"] = round(out["on"]["ttft_s"][-1] / out["off"]["ttft_s"][-1], 3)
    emit(phase="chat", **out)
    return out


def _throughput(server: ServerProcess, model: str, prompts: list[list[str]], answer_tokens: int) -> float:
    """Clients (one per list) sending their prompts in turn; generated tokens per second."""
    tokens = [0] * len(prompts)

    def client(i: int) -> None:
        for p in prompts[i]:
            doc = server.post("/v1/completions", {"model": model, "prompt": p, "max_tokens": answer_tokens,
                                                  "temperature": 0})
            tokens[i] += doc["usage"]["completion_tokens"]

    wall = run_clients(client, len(prompts))
    return sum(tokens) / wall


def phase_throughput(servers: dict[str, ServerProcess], args: argparse.Namespace, shared: bool) -> dict[str, Any]:
    rng = random.Random(3 if shared else 4)
    system = _text(rng, args.system_tokens) if shared else ""
    prompts = [[(system + "\n\n" if shared else _text(rng, 48) + " ") + f"Question {c}.{k}: {_text(rng, 8)}?"
                for k in range(args.per_client)] for c in range(args.clients)]
    out: dict[str, Any] = {}
    for name in _order(servers, 2 if shared else 3):
        if shared:  # an application's system prompt is hot in steady state: one request before timing
            servers[name].post("/v1/completions", {"model": args.model_name, "prompt": system + "\n\nHello?",
                                                   "max_tokens": 1})
        out[f"{name}_tok_s"] = round(_throughput(servers[name], args.model_name, prompts, args.answer_tokens), 2)
    out["on_over_off"] = round(out["on_tok_s"] / out["off_tok_s"], 3)
    emit(phase="shared_system" if shared else "no_sharing", **out)
    return out


def _order(servers: dict[str, ServerProcess], turn: int) -> list[str]:
    return ["on", "off"] if turn % 2 == 0 else ["off", "on"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="model folder (default: a random SmolLM2-135M-shaped base)")
    ap.add_argument("--quantize", default="auto")
    ap.add_argument("--examples", type=int, default=32, help="few-shot pairs of the template adapter")
    ap.add_argument("--requests", type=int, default=8, help="template phase: requests per server")
    ap.add_argument("--turns", type=int, default=10, help="chat phase: turns")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=3, help="requests per client in the throughput phases")
    ap.add_argument("--system-tokens", type=int, default=1000, help="words of the shared system prompt")
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--phases", nargs="+", default=["template", "chat", "shared_system", "no_sharing"])
    ap.add_argument("--save", default=None, help="also write the summary document here (JSON)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prefix-bench-"))
    base = Path(args.base) if args.base else work / "base"
    if not args.base:
        build_base(base, "smol135m", torch.device("cpu"), torch.float32)
        args.phases = [p for p in args.phases if p != "chat"]  # no chat template on a random base
    registry = LocalRegistry(work / "registry")
    rng = random.Random(0)
    template = PromptTemplate(system="Answer each question with one word.", template="Question: {input}\nAnswer:",
                              examples=tuple(FewShot(_text(rng, 10), " " + rng.choice(WORDS))
                                             for _ in range(args.examples)))
    registry.push(write_prompt_template(template, work / "fewshot"), name="fewshot", task="qa", base=str(base))
    args.model_name = str(base)
    common = ("--quantize", args.quantize, "--max-batch-size", str(max(args.clients, 8)))
    servers: dict[str, ServerProcess] = {}
    results: dict[str, Any] = {}
    try:
        servers["on"] = ServerProcess(base, work / "registry", *common, log=work / "on.log")
        servers["off"] = ServerProcess(base, work / "registry", *common, "--prefix-cache-bytes", "0",
                                       log=work / "off.log")
        for name in args.phases:
            if name == "template":
                results[name] = phase_template(servers, args)
            elif name == "chat":
                results[name] = phase_chat(servers, args)
            else:
                results[name] = phase_throughput(servers, args, shared=name == "shared_system")
        results["rss_mib"] = {k: round(rss_bytes(s.pid) / 2**20, 1) for k, s in servers.items()}
        health = json.loads(servers["on"].get("/health"))
        results["prefix_cache"] = health.get("prefix_cache")
    finally:
        for s in servers.values():
            s.close()
    summary = {"config": {k: v for k, v in vars(args).items()}, "cpus": torch.get_num_threads(), **results}
    print(json.dumps(summary, indent=2))
    if args.save:
        Path(args.save).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
