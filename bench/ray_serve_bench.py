"""Ray Serve fleet against plain ``adapterhub serve``: adapter loads under affinity routing, and overhead.

Two measurements, each against a baseline run in the same invocation:

* ``affinity``: 8 LoRAs, ``--max-loaded-adapters 4`` per server, ``--requests`` requests (default
  1,000) whose adapter is drawn from a Zipf distribution (exponent ``--zipf``, seeded), sent by 8
  clients. Ray: ``adapterhub serve --replicas 2`` (multiplexed routing by adapter digest); baseline:
  two plain ``adapterhub serve`` processes with the same settings, requests dealt round robin, as a
  plain load balancer would. Counted: adapter loads per 1,000 requests (Ray: each replica's
  ``X-Adapterhub-Replica-Adapter-Loads``, the largest seen per replica; plain: ``/metrics``).
* ``overhead``: the load of bench/serve_load.py (4 LoRAs + 4 soft prompts, ``--clients`` clients,
  ``--duration`` s per phase) on one plain server and on a fleet of one replica, phases
  alternating; then the same against two replicas: throughput and p50 latency ratios; between
  phases, 30 requests from one client (what the hops add when nothing waits); and Ray Serve's own
  floor on this machine (empty handlers, one and two hops).

    python bench/ray_serve_bench.py                   # both, about 6 minutes on 2 cores
    python bench/ray_serve_bench.py --only affinity

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import ServerProcess, build, drive  # noqa: E402

LOADS_HEADER = "X-Adapterhub-Replica-Adapter-Loads"
REPLICA_HEADER = "X-Adapterhub-Replica"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_loras(workdir: Path, n: int) -> tuple[Path, Path]:
    """The tiny base and a registry of ``n`` PEFT LoRAs (rank 8, attention and MLP)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapterhub.registry import LocalRegistry
    from adapterhub.tinybase import build_tiny_base

    base = build_tiny_base(workdir / "base")
    registry = LocalRegistry(workdir / "registry")
    for i in range(n):
        torch.manual_seed(300 + i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
        model.save_pretrained(workdir / f"a{i}")
        registry.push(workdir / f"a{i}", name=f"a{i}", task="bench", base=str(base))
    return base, workdir / "registry"


def zipf_requests(n: int, adapters: int, exponent: float, seed: int) -> list[str]:
    weights = [1 / (k + 1) ** exponent for k in range(adapters)]
    rng = random.Random(seed)
    return [f"a{rng.choices(range(adapters), weights)[0]}" for _ in range(n)]


class Fleet(ServerProcess):
    """``adapterhub serve --replicas N`` (Ray starts inside it); remembers each replica's load count."""

    def __init__(self, base: Path, registry: Path, replicas: int, *extra: str) -> None:
        super().__init__(base, registry, "--replicas", str(replicas), "--port", str(free_port()), *extra)
        self.loads: dict[str, int] = {}
        self._lock = threading.Lock()

    def post_counting(self, model: str, max_tokens: int) -> None:
        import http.client

        conn = http.client.HTTPConnection(*self.url, timeout=600)
        conn.request("POST", "/v1/completions", json.dumps({"model": model, "prompt": "Tell me", "max_tokens":
                                                            max_tokens, "temperature": 0}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        with self._lock:
            replica = resp.getheader(REPLICA_HEADER)
            self.loads[replica] = max(self.loads.get(replica, 0), int(resp.getheader(LOADS_HEADER)))


def _send_all(requests: list[str], send, clients: int) -> None:
    """Send ``requests`` in order from ``clients`` threads (each takes the next one)."""
    queue = iter(enumerate(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            send(*item)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _metric_loads(server: ServerProcess) -> int:
    text = server.get("/metrics")
    return int(sum(float(v) for v in re.findall(r"^adapterhub_adapter_loads_total\{[^}]*\} (\S+)$", text, re.M)))


def affinity(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base, registry = build_loras(work / "affinity", 8)
    requests = zipf_requests(args.requests, 8, args.zipf, seed=7)
    common = ("--quantize", "none", "--max-loaded-adapters", "4", "--max-batch-size", "8")
    with Fleet(base, registry, 2, *common) as fleet:
        _send_all(requests, lambda i, m: fleet.post_counting(m, args.max_tokens), args.clients)
        ray_loads = sum(fleet.loads.values())
        replicas_seen = len(fleet.loads)
    with ServerProcess(base, registry, *common) as one, ServerProcess(base, registry, *common) as two:
        servers = (one, two)
        _send_all(requests, lambda i, m: servers[i % 2].complete(m, [65, 66, 67], args.max_tokens), args.clients)
        rr_loads = _metric_loads(one) + _metric_loads(two)
    per_k = 1000 / len(requests)
    counts = {f"a{k}": requests.count(f"a{k}") for k in range(8)}
    return {"requests": len(requests), "zipf_exponent": args.zipf, "requests_per_adapter": counts,
            "replicas_answering": replicas_seen,
            "loads_per_1000_ray_affinity": round(ray_loads * per_k, 1),
            "loads_per_1000_round_robin": round(rr_loads * per_k, 1),
            "ratio_affinity_to_round_robin": round(ray_loads / rr_loads, 3) if rr_loads else None}


def overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Plain server and fleet side by side, their load phases alternating (``--rounds`` each), so
    a noisy neighbour slows both alike; the best round of each is compared."""
    base, registry, _ = build(work / "overhead", args.shape)
    common = ("--quantize", "none", "--max-batch-size", str(args.clients), "--max-loaded-adapters", "8",
              "--max-lora-rank", "16")
    results: dict[str, Any] = {}
    for replicas in (1, 2):
        label = f"ray_{replicas}_replica{'s' if replicas > 1 else ''}"
        with ServerProcess(base, registry, *common) as plain, Fleet(base, registry, replicas, *common) as fleet:
            rounds: dict[str, list[dict[str, Any]]] = {"plain": [], label: []}
            for server in (plain, fleet):
                for k in range(8):  # warm-up: every adapter loaded once (on some replica)
                    server.complete(f"lora{k}" if k < 4 else f"prompt{k - 4}", [65] * args.prompt_len, 2)
            sequential: dict[str, list[float]] = {"plain": [], label: []}
            for _ in range(args.rounds):
                for name, server in (("plain", plain), (label, fleet)):
                    rounds[name].append(drive(server.complete, args.clients, args.duration, args.prompt_len,
                                              lambda: 0))
                    sequential[name] += one_at_a_time(server, 30)
        best = {name: max(rs, key=lambda r: r["tokens_per_s"]) for name, rs in rounds.items()}
        for r in best.values():
            for key in [k for k in r if k.startswith("rss_")]:
                del r[key]  # the driver's memory says nothing about the replicas'
        ours, plain_best = best[label], best["plain"]
        ours["plain_same_run"] = plain_best
        ours["throughput_ratio_to_plain"] = round(ours["tokens_per_s"] / plain_best["tokens_per_s"], 3)
        ours["p50_added_ms"] = round((ours["latency_p50_s"] - plain_best["latency_p50_s"]) * 1000, 1)
        ours["tokens_per_s_every_round"] = {n: [r["tokens_per_s"] for r in rs] for n, rs in rounds.items()}
        p50 = {n: statistics.median(v) for n, v in sequential.items()}
        ours["one_client_p50_ms"] = {n: round(v * 1000, 1) for n, v in p50.items()}
        ours["one_client_p50_added_ms"] = round((p50[label] - p50["plain"]) * 1000, 1)
        results[label] = ours
    results["ray_serve_floor"] = ray_floor()
    return results


def one_at_a_time(server: ServerProcess, n: int) -> list[float]:
    """Latencies of ``n`` requests sent one after another (2 tokens): what each hop adds, unloaded."""
    out = []
    for i in range(n):
        started = time.perf_counter()
        server.complete(f"lora{i % 4}", [65] * 8, 2)
        out.append(time.perf_counter() - started)
    return out


def ray_floor() -> dict[str, float]:
    """Ray Serve's own round trip on this machine, handlers doing nothing: HTTP proxy to one
    deployment, and proxy to an ingress that calls a second deployment (our layout)."""
    import http.client

    import ray
    from ray import serve
    from starlette.responses import Response

    quiet = {"enable_access_log": False, "log_level": "WARNING"}

    @serve.deployment(logging_config=quiet)
    class Inner:
        async def call(self) -> bytes:
            return b"ok"

    @serve.deployment(logging_config=quiet, ray_actor_options={"num_cpus": 0})
    class Outer:
        def __init__(self, inner: Any = None) -> None:
            self.inner = inner

        async def __call__(self, request: Any) -> Response:
            await request.body()
            return Response(b"ok" if self.inner is None else await self.inner.options(
                multiplexed_model_id="m").call.remote())

    port = free_port()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    try:
        serve.start(http_options={"port": port})
        serve.run(Outer.bind(), name="one", route_prefix="/one")
        serve.run(Outer.bind(Inner.bind()), name="two", route_prefix="/two")
        conn = http.client.HTTPConnection("127.0.0.1", port)
        p50 = {}
        for path in ("/one", "/two"):
            lat = []
            for _ in range(100):
                started = time.perf_counter()
                conn.request("POST", path, b"{}")
                conn.getresponse().read()
                lat.append(time.perf_counter() - started)
            p50[f"p50_ms_{path[1:]}_hop{'s' if path == '/two' else ''}"] = round(statistics.median(lat[20:]) * 1000, 1)
        return p50
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["affinity", "overhead"])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load phase")
    parser.add_argument("--rounds", type=int, default=3, help="load phases per system, alternating")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--shape", default="tiny", choices=["tiny", "smol135m"])
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "affinity"):
            out["affinity"] = affinity(args, Path(tmp))
        if args.only in (None, "overhead"):
            out["overhead"] = overhead(args, Path(tmp))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
