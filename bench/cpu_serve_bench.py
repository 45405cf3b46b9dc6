"""CPU serving through ``adapterhub serve``: the default quantization against ``--quantize none`` and
HF eager fp32 ``generate``, base-only and 8 distinct LoRAs, plus adapter load time; one run.

Random-init SmolLM2-135M-shaped base by default (speed does not depend on weight values), or a real
model folder with ``--base`` (e.g. the HF copy of SmolLM2-135M-Instruct), 8 rank-16 LoRAs on all
linear layers (random non-zero B). Two real server processes (``--quantize none`` and the
default, which is bf16 on a CPU, or ``--quantize MODE``) stay up, idle between phases; clients are threads holding one
HTTP connection each. Every round runs, in this order: HF eager fp32 ``generate`` at batch
``--clients`` in this process (the reference of every ratio), then ``--clients`` clients with
``--requests`` requests each on the fp32 server (base only), the default server (base only), and the
default server with each client on a different adapter. Rounds interleave so machine noise hits
every phase alike; each figure is the best round (medians printed too).

    python bench/cpu_serve_bench.py                    # 8 clients, prompt 64, 32 new tokens, 3 rounds

Prints JSON lines while it runs and one summary document at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from hetero_lora_bench import SHAPES, build_base, emit, make_adapters  # noqa: E402
from serve_load import ServerProcess, run_clients  # noqa: E402

from adapterhub.registry import LocalRegistry  # noqa: E402


def hf_eager(base: Path, ids: torch.Tensor, new: int) -> Callable[[], float]:
    """The reference: HF eager fp32 ``generate`` over the whole batch, fixed number of new tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()

    def run() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)
        return ids.shape[0] * new / (time.perf_counter() - t0)

    run()  # warm-up
    return run


def clients_phase(server: ServerProcess, models: list[str], prompts: list[list[list[int]]], new: int) -> float:
    """Client ``c`` sends its prompts one after another to ``models[c]``; tokens/s over the wall time."""
    counts = [0] * len(models)
    errors: list[str] = []

    def client(c: int) -> None:
        for ids in prompts[c]:
            try:
                counts[c] += server.complete(models[c], ids, new)
            except Exception as e:  # reported, never hidden
                errors.append(f"{type(e).__name__}: {e}"[:200])

    wall = run_clients(client, len(models))
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return sum(counts) / wall


def adapter_loads(server: ServerProcess, refs: list[str], trials: int) -> dict[str, float]:
    """Unload then load each adapter through the API; the server's own timing and the round trip."""
    inside, round_trip = [], []
    for _ in range(trials):
        for ref in refs:
            try:
                server.post("/v1/adapters/unload", {"model": ref})
            except RuntimeError:
                pass  # not resident yet
            t0 = time.perf_counter()
            doc = server.post("/v1/adapters/load", {"model": ref})
            round_trip.append(time.perf_counter() - t0)
            inside.append(doc["seconds"])
    return {"load_ms_p50": _ms(inside, 0.5), "load_ms_p95": _ms(inside, 0.95), "load_ms_max": _ms(inside, 1.0),
            "http_round_trip_ms_p50": _ms(round_trip, 0.5), "http_round_trip_ms_p95": _ms(round_trip, 0.95),
            "loads": len(inside)}


def _ms(seconds: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) in milliseconds."""
    ordered = sorted(seconds)
    return round(1e3 * ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="smol135m", choices=sorted(SHAPES))
    ap.add_argument("--base", default=None, help="a model folder to serve instead of a random --shape base")
    ap.add_argument("--quantize", default=None, help="the mode to compare with none (default: the server's auto)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="requests per client per phase")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load-trials", type=int, default=6, help="unload + load rounds over every adapter")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the HF eager reference")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="an extra `adapterhub serve` argument for both servers (repeatable), "
                         "e.g. --serve-arg=--prefix-cache-bytes=0")
    ap.add_argument("--save", default=None, help="write the summary document to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.base is None:
            base = work / "base"
            build_base(base, args.shape, cpu, torch.float32)
        else:
            base = Path(args.base)
        paths = make_adapters(base, work / "adapters", {args.rank: args.clients}, cpu, torch.float32)[args.rank]
        registry = LocalRegistry(work / "registry")
        refs = [registry.push(p, name=p.name, task="bench", base=str(base)).ref for p in paths]
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(base).vocab_size
        rng = random.Random(0)

        def prompts() -> list[list[list[int]]]:
            return [[[rng.randrange(vocab) for _ in range(args.prompt)] for _ in range(args.requests)]
                    for _ in range(args.clients)]

        ids = torch.tensor([p[0] for p in prompts()])
        reference = hf_eager(base, ids, args.new)
        common = ("--device", "cpu", "--max-batch-size", str(args.clients), "--max-loaded-adapters",
                  str(args.clients), "--max-lora-rank", str(args.rank), "--threads", str(args.clients + 4),
                  *args.serve_arg)
        with ServerProcess(base, work / "registry", "--quantize", "none", *common) as fp32, \
                ServerProcess(base, work / "registry", *common,
                              *(("--quantize", args.quantize) if args.quantize else ())) as default:
            emit(event="servers", fp32=fp32.banner, default=default.banner)
            loads = adapter_loads(default, refs, args.load_trials)
            emit(event="adapter_load", **loads)
            phases = {
                "hf_eager_fp32": reference,
                "serve_fp32_base": lambda: clients_phase(fp32, [str(base)] * args.clients, prompts(), args.new),
                "serve_default_base": lambda: clients_phase(default, [str(base)] * args.clients, prompts(), args.new),
                "serve_default_8_adapters": lambda: clients_phase(default, refs, prompts(), args.new),
            }
            for server in (fp32, default):  # warm-up: first requests, adapters resident
                clients_phase(server, refs if server is default else [str(base)] * args.clients, prompts(), 2)
            rounds: dict[str, list[float]] = {name: [] for name in phases}
            for r in range(args.rounds):
                for name, phase in phases.items():
                    rounds[name].append(phase())
                emit(event="round", round=r, **{k: round(v[-1], 1) for k, v in rounds.items()})

    best = {k: max(v) for k, v in rounds.items()}
    median = {k: statistics.median(v) for k, v in rounds.items()}
    ref = best["hf_eager_fp32"]
    summary = {
        "config": vars(args),
        "tokens_per_s_best": {k: round(v, 1) for k, v in best.items()},
        "vs_hf_eager_fp32_best": {k: round(v / ref, 2) for k, v in best.items()},
        "vs_hf_eager_fp32_median": {k: round(v / median["hf_eager_fp32"], 2) for k, v in median.items()},
        "default_base_vs_fp32_base": round(best["serve_default_base"] / best["serve_fp32_base"], 2),
        "adapters_vs_default_base": round(best["serve_default_8_adapters"] / best["serve_default_base"], 2),
        "default_base_vs_fp32_base_per_round": [round(d / f, 2) for d, f in zip(rounds["serve_default_base"],
                                                                              rounds["serve_fp32_base"])],
        "adapters_vs_default_base_per_round": [round(a / d, 2) for a, d in zip(rounds["serve_default_8_adapters"],
                                                                             rounds["serve_default_base"])],
        "adapter_load": loads,
        "rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
    }
    print(json.dumps(summary, indent=2))
    if args.save:
        Path(args.save).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
