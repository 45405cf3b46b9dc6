"""Soak: well-behaved clients next to every hostile one, against a real ``adapterhub serve --with-hub``.

The server is ``adapterhub serve`` in a subprocess (bench/serve_load.py's ``ServerProcess``) on the
tiny default base, as shipped (``--quantize auto``), with an API key, an admin key and the hub
mounted (``--with-hub``) on a registry folder holding PEFT-made LoRAs and soft prompts (those of
tests/serving_helpers.py), a LoRA whose logits overflow to NaN, and a LoRA the Hugging Face commit
race writes to. Everything is on 127.0.0.1.

1. **No attack** (a quarter of ``--minutes``). Every request of the well-behaved pool (completions
   and chat over the base and each adapter, some streamed; greedy, temperature 0, fixed
   ``max_tokens``, ``return_token_ids``) is sent alone once: its tokens are the reference. Then
   ``--clients`` threads loop over the pool; per-request latency p50/p99.
2. **Attack** (the rest). The same clients, plus the hostile ones of bench/soak_hostile.py in a
   process of their own, each kind looping: huge model strings, half-closing clients, ambiguous
   framing (Content-Length with Transfer-Encoding, two lengths, obs-fold...), slowloris sockets and
   announced-but-unsent bodies, never-reading streams, cancel storms, load/unload races on both
   LoRA APIs, NaN and oversized metrics PATCHes, concurrent Hugging Face commits, huge stop lists,
   deeply nested JSON, lone surrogates, path traversal, query-string tokens, oversized
   ``logit_bias``, ``--idle-connections`` idle sockets, numeric edges, 10 MB prompts, the NaN adapter,
   byte ranges.
3. **Recovery**: ``--settle-s`` seconds idle, then the server stops and ``adapterhub verify`` (the
   real CLI) checks the registry folder.

Bars (exit status 1 if any fails): well-behaved p99 under attack within ``--max-p99-ratio`` (2) of
its no-attack figure; zero wrong answers (an answer other than the reference, or any non-200); the
server's RSS (``VmRSS`` of /proc/PID/status) ``--settle-s`` after the attack within 10% of its level
before it; ``verify`` clean; no hostile request answered 5xx or left unanswered (and none of the
regressions tests/test_hostile_clients.py and tests/test_hub_hardening.py pin). Every step prints a
JSON line on stdout; a summary follows.

    python bench/soak.py                          # 5 minutes, 4 well-behaved clients
    python bench/soak.py --minutes 1 --save soak.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT, TESTS = BENCH.parent, BENCH.parent / "tests"
sys.path[:0] = [p for p in (str(BENCH), str(TESTS)) if p not in sys.path]

import soak_hostile  # noqa: E402
from serve_load import ServerProcess  # noqa: E402

HOST = "127.0.0.1"
USER_KEY = "soak-user-key"
ADMIN_KEY = "soak-admin-key"
NAN_ADAPTER = "lora-overflow"
RACE_REPO = "soak/race"
RACE_BASE = "soak/tiny-llama"  # never served: only the commit race writes to its adapter


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout: what the soak measured, as it goes."""
    print(json.dumps({"event": event, **fields}), flush=True)


# --- the registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    """What the server serves: a base folder, a registry folder holding the adapters, and a PEFT folder
    (one of the pushed LoRAs) that a client may name by path."""

    base: Path
    registry: Path
    adapters: tuple[str, ...]
    nan_adapter: str
    race_repo: str = RACE_REPO
    lora_folder: Path | None = None


def build_fixture(workdir: Path, base: Path | None = None) -> Fixture:
    """The base (the CLI's default tiny base unless given), tests/serving_helpers.py's LoRAs and soft
    prompts, the overflowing LoRA and the commit race's LoRA, saved by PEFT and pushed into a fresh
    registry at ``workdir/registry``."""
    from adapterhub.api import default_base
    from adapterhub.registry import LocalRegistry
    from conftest import save_lora
    from serving_helpers import ADAPTER_SPECS, push_serving_adapters, save_overflowing_lora

    base = base or Path(default_base())
    registry = LocalRegistry(workdir / "registry")
    folders = push_serving_adapters(registry, base, workdir / "adapters")
    registry.push(save_overflowing_lora(base, workdir / "adapters" / NAN_ADAPTER), name=NAN_ADAPTER, task="soak",
                  base=str(base))
    race = save_lora(base, workdir / "adapters" / "race", seed=41)
    config = race / "adapter_config.json"  # a hub refuses commits naming a base by a path: a Hub id here
    config.write_text(json.dumps(json.loads(config.read_text()) | {"base_model_name_or_path": RACE_BASE}))
    registry.push(race, name=RACE_REPO, task="soak", base=RACE_BASE)
    lora = next(name for name, (kind, _, _) in ADAPTER_SPECS.items() if kind == "lora")
    return Fixture(base, workdir / "registry", tuple(ADAPTER_SPECS), NAN_ADAPTER, lora_folder=folders[lora])


def cli(*args: str) -> subprocess.CompletedProcess:
    """``adapterhub ARGS`` as a user runs it (not raising: the caller judges the exit status)."""
    return subprocess.run([sys.executable, "-m", "adapterhub.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


def create_write_token(registry: Path) -> str:
    """A write token of the registry's hub, made with ``adapterhub hub token create``."""
    done = cli("hub", "token", "create", "--scope", "write", "--name", "soak", "--registry", str(registry), "--json")
    if done.returncode != 0:
        raise RuntimeError(f"adapterhub hub token create failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)["token"]


def verify(registry: Path) -> dict[str, Any]:
    """``adapterhub verify --json`` on the registry folder: its exit status and report."""
    done = cli("verify", "--registry", str(registry), "--json")
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"stdout": done.stdout[-500:], "stderr": done.stderr[-500:]}
    return {"exit_status": done.returncode, "report": report}


# --- well-behaved requests -------------------------------------------------------------------------


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
            self.conn.request("POST", req.path, json.dumps(req.body).encode(), self.headers)
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


def reference_answers(port: int, pool: list[GoodRequest], timeout: float) -> dict[str, list[list[int]]]:
    """Each well-behaved request alone on the idle server: the tokens it must get ever after."""
    client = Client(port, _headers(USER_KEY), timeout)
    reference = {}
    for req in pool:
        answer = client.ask(req)
        if answer.tokens is None:
            raise RuntimeError(f"idle server: {req.label} got HTTP {answer.status} {answer.error}")
        reference[req.label] = answer.tokens
    client.close()
    return reference


def _headers(key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}


@dataclass
class GoodStats:
    """What the well-behaved clients got in one phase."""

    latencies: list[float] = field(default_factory=list)
    answers: int = 0
    wrong: int = 0  # tokens other than the reference's, or no 200
    samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self, wall_s: float) -> dict[str, Any]:
        return {"requests": self.answers, "wrong_answers": self.wrong, "wall_s": round(wall_s, 1),
                "requests_per_s": round(self.answers / wall_s, 2) if wall_s else 0.0,
                "latency_p50_s": percentile(self.latencies, 50), "latency_p99_s": percentile(self.latencies, 99),
                "latency_max_s": round(max(self.latencies), 3) if self.latencies else None,
                "wrong_samples": self.samples[:10]}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: with few samples p99 is the largest but one or two)."""
    if not values:
        return None
    ranked = sorted(values)
    return round(ranked[max(0, math.ceil(q / 100 * len(ranked)) - 1)], 4)


def _good_client(port: int, pool: list[GoodRequest], reference: dict[str, list[list[int]]], offset: int,
                 deadline: float, timeout: float, stats: GoodStats) -> None:
    client = Client(port, _headers(USER_KEY), timeout)
    i = 0
    while time.monotonic() < deadline:
        req = pool[(offset + i) % len(pool)]
        i += 1
        started = time.monotonic()
        answer = client.ask(req)
        took = time.monotonic() - started
        with stats.lock:
            stats.answers += 1
            stats.latencies.append(took)
            if answer.tokens != reference[req.label]:
                stats.wrong += 1
                stats.samples.append(f"{req.label}: HTTP {answer.status} {answer.error or ''} tokens {answer.tokens} "
                                     f"(reference {reference[req.label]})"[:600])
    client.close()


def run_good_clients(port: int, pool: list[GoodRequest], reference: dict[str, list[list[int]]], clients: int,
                     deadline: float, timeout: float) -> tuple[GoodStats, float]:
    """``clients`` threads over the pool (each from its own offset) until ``deadline`` (monotonic);
    a request started before it is finished and counted. Returns the stats and the wall time."""
    stats = GoodStats()
    start = time.monotonic()
    threads = [threading.Thread(target=_good_client, args=(port, pool, reference, c * 7, deadline, timeout, stats))
               for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats, time.monotonic() - start


# --- memory ------------------------------------------------------------------------------------------


def vm_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` (``VmRSS`` of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


class RssSampler:
    """The server's RSS every ``interval`` s, labelled with the phase running."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval, self.phase = pid, interval, "no_attack"
        self.samples: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append((time.monotonic(), self.phase, vm_rss(self.pid)))
            except (OSError, StopIteration):  # the server is gone: the run reports it
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def of(self, phase: str) -> list[int]:
        return [rss for _, p, rss in self.samples if p == phase]


def _level_mb(samples: list[int]) -> float | None:
    return round(statistics.median(samples) / 2**20, 1) if samples else None


# --- the run -------------------------------------------------------------------------------------------


def _idle(sampler: RssSampler, phase: str, seconds: float) -> list[int]:
    """Wait ``seconds`` with no client; the RSS samples of the last few seconds of it."""
    sampler.phase = phase
    time.sleep(seconds)
    sampler.phase = f"{phase}_done"
    return sampler.of(phase)[-6:]


def _attack(target: soak_hostile.Target, seconds: float, kinds: list[str], port: int, pool: list[GoodRequest],
            reference: dict[str, list[list[int]]], args: argparse.Namespace) -> tuple[GoodStats, float, dict[str, Any]]:
    """The hostile process for ``seconds``, the good clients beside it; returns their stats, wall
    time, and what the hostile kinds got."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=soak_hostile.run_hostile, args=(target, seconds, kinds, results), daemon=True)
    proc.start()
    try:
        ready = results.get(timeout=120)  # ("ready", deadline as time.time())
        if ready[0] != "ready":
            raise RuntimeError(f"the hostile clients did not start: {ready[1]}")
        deadline = time.monotonic() + (ready[1] - time.time())
        stats, wall = run_good_clients(port, pool, reference, args.clients, deadline, args.timeout)
        hostile = results.get(timeout=4 * args.timeout + 60)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return stats, wall, hostile


def run_soak(fixture: Fixture, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, run the three phases, stop it, verify the registry; the result with its bars."""
    total_s = args.minutes * 60
    quiet_s = total_s / 4
    token = create_write_token(fixture.registry)
    server = ServerProcess(fixture.base, fixture.registry, "--with-hub", "--threads", str(args.threads),
                           "--api-key", USER_KEY, "--admin-api-key", ADMIN_KEY, log=workdir / "server.log")
    emit("server", banner=server.banner, pid=server.pid, threads=args.threads)
    port = server.url[1]
    sampler = RssSampler(server.pid)
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=args.timeout)
        conn.request("GET", "/v1/models", headers=_headers(USER_KEY))
        base_name = json.loads(conn.getresponse().read())["data"][0]["id"]  # the base is listed first
        conn.close()
        pool = good_pool([base_name, *fixture.adapters])
        reference = reference_answers(port, pool, args.timeout)
        emit("reference", requests=len(pool), models=[base_name, *fixture.adapters])
        quiet, quiet_wall = run_good_clients(port, pool, reference, args.clients, time.monotonic() + quiet_s,
                                             args.timeout)
        emit("no_attack", **quiet.summary(quiet_wall))
        before = _idle(sampler, "before", 3.0)
        emit("rss_before", mb=_level_mb(before))
        target = soak_hostile.Target(port, USER_KEY, ADMIN_KEY, token, base_name, fixture.adapters, fixture.nan_adapter,
                                     fixture.race_repo, str(fixture.lora_folder), args.timeout, args.slow_sockets,
                                     args.hold_s, args.idle_connections)
        sampler.phase = "attack"
        attacked, attack_wall, hostile = _attack(target, total_s - quiet_s, args.kinds, port, pool, reference, args)
        emit("attack", **attacked.summary(attack_wall))
        emit("hostile", **hostile)
        peak = max(sampler.of("attack"), default=0)
        after = _idle(sampler, "after", args.settle_s)
        emit("rss", before_mb=_level_mb(before), peak_mb=round(peak / 2**20, 1), after_mb=_level_mb(after),
             after_s=args.settle_s)
        alive = server.proc.poll() is None
    finally:
        sampler.stop()
        server.close()
    checked = verify(fixture.registry)
    emit("verify", **checked)
    return judge(quiet.summary(quiet_wall), attacked.summary(attack_wall), hostile,
                 {"before_mb": _level_mb(before), "peak_mb": round(peak / 2**20, 1), "after_mb": _level_mb(after),
                  "after_s": args.settle_s}, checked, alive, args)


def judge(quiet: dict[str, Any], attacked: dict[str, Any], hostile: dict[str, Any], rss: dict[str, Any],
          checked: dict[str, Any], alive: bool, args: argparse.Namespace) -> dict[str, Any]:
    """The figures and the bars of issue 25."""
    ratio = (attacked["latency_p99_s"] / quiet["latency_p99_s"]
             if quiet["latency_p99_s"] and attacked["latency_p99_s"] is not None else None)
    rss_ratio = rss["after_mb"] / rss["before_mb"] if rss["before_mb"] and rss["after_mb"] else None
    report = checked["report"]
    bars = {
        "p99_within_ratio": ratio is not None and ratio <= args.max_p99_ratio,
        "zero_wrong_answers": quiet["wrong_answers"] == 0 and attacked["wrong_answers"] == 0,
        "rss_back_within_10pct": rss_ratio is not None and rss_ratio <= 1 + args.rss_tolerance,
        "verify_clean": checked["exit_status"] == 0 and report.get("ok") is True,
        "no_hostile_failures": not hostile["failures"] and hostile.get("threads_still_running", 0) == 0,
        "server_alive": alive,
    }
    five_xx = {kind: {o: n for o, n in outcomes.items() if o.split(":")[-1].startswith("5") and "expected" not in o}
               for kind, outcomes in hostile["counts"].items()}
    return {
        "config": {"minutes": args.minutes, "clients": args.clients, "threads": args.threads, "kinds": args.kinds,
                   "settle_s": args.settle_s, "cpus": os.cpu_count()},
        "no_attack": quiet, "attack": attacked,
        "p99_ratio_attack_vs_no_attack": round(ratio, 3) if ratio is not None else None,
        "rss_mb": rss | {"after_over_before": round(rss_ratio, 3) if rss_ratio else None},
        "verify": checked,
        "hostile": {"requests": sum(sum(o.values()) for o in hostile["counts"].values()),
                    "counts": hostile["counts"], "5xx": {k: v for k, v in five_xx.items() if v},
                    "failures": hostile["failures"][:50], "failure_count": len(hostile["failures"])},
        "bars": bars,
        "passed": all(bars.values()),
    }


def print_summary(result: dict[str, Any]) -> None:
    q, a, rss, h = result["no_attack"], result["attack"], result["rss_mb"], result["hostile"]
    print(f"soak: {result['config']['minutes']:g} min, {result['config']['clients']} well-behaved clients, "
          f"{len(result['config']['kinds'])} hostile kinds, server --threads {result['config']['threads']}")
    for name, r in (("no attack", q), ("attack", a)):
        print(f"  {name:9}: {r['requests']} requests ({r['requests_per_s']}/s), p50 {r['latency_p50_s']} s, "
              f"p99 {r['latency_p99_s']} s, wrong {r['wrong_answers']}")
    print(f"  p99 attack / no attack: {result['p99_ratio_attack_vs_no_attack']}")
    print(f"  server RSS: before {rss['before_mb']} MiB, peak {rss['peak_mb']} MiB, {rss['after_s']:g} s after "
          f"{rss['after_mb']} MiB ({rss['after_over_before']}x)")
    print(f"  verify: exit {result['verify']['exit_status']}, ok {result['verify']['report'].get('ok')}")
    print(f"  hostile requests: {h['requests']}; 5xx: {h['5xx'] or 'none'}; failures: {h['failure_count']}")
    for line in h["failures"][:10] + a["wrong_samples"][:5] + q["wrong_samples"][:5]:
        print(f"    {line}")
    for name, ok in result["bars"].items():
        print(f"  {'PASS' if ok else 'FAIL'} {name}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="no attack (a quarter) plus attack (the rest)")
    parser.add_argument("--clients", type=int, default=4, help="well-behaved client threads")
    parser.add_argument("--threads", type=int, default=64, help="the server's --threads (HTTP worker threads)")
    parser.add_argument("--save", type=Path, default=None, help="also write the whole result here (JSON)")
    parser.add_argument("--settle-s", type=float, default=60.0, help="idle seconds after the attack before the RSS")
    parser.add_argument("--max-p99-ratio", type=float, default=2.0, help="bar: attack p99 over no-attack p99")
    parser.add_argument("--rss-tolerance", type=float, default=0.10, help="bar: RSS after over before, minus 1")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout of every request")
    parser.add_argument("--slow-sockets", type=int, default=16, help="connections one slowloris round holds")
    parser.add_argument("--hold-s", type=float, default=5.0, help="seconds slow and unread connections are held")
    parser.add_argument("--idle-connections", type=int, default=256, help="idle sockets held at once")
    parser.add_argument("--kinds", nargs="+", default=list(soak_hostile.KINDS), choices=list(soak_hostile.KINDS),
                        metavar="KIND", help="hostile kinds to run (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        fixture = build_fixture(Path(tmp))
        result = run_soak(fixture, Path(tmp), args)
        if not result["passed"]:
            print((Path(tmp) / "server.log").read_text(errors="replace")[-4000:], file=sys.stderr)
    emit("summary", **result)
    print_summary(result)
    if args.save:
        args.save.write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
