"""Registry speed: push and pull of a 100 MB adapter against `cp` of the same files on the same
disk, and `adapterhub list` over a registry with 10,000 versions.

Prints one JSON document. Rounds interleave the contenders so machine noise hits them alike;
figures are medians.

    python bench/registry_bench.py [--megabytes 100] [--rounds 5] [--versions 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapterhub.registry import LocalRegistry  # noqa: E402
from tests.test_registry_concurrency import big_lora  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_push_pull(work: Path, src: Path, rounds: int, durable: bool) -> dict:
    """Durable pushes fsync what they store, so they are compared with `cp` followed by `sync`
    of the copy; non-durable pushes with a plain `cp`."""
    size = sum(f.stat().st_size for f in src.iterdir())
    cp, push, pull = [], [], []
    for i in range(rounds):
        dst = work / f"cp{i}"
        copy = ["cp", "-r", str(src), str(dst)]

        def run_cp() -> None:
            subprocess.run(copy, check=True)
            if durable:
                subprocess.run(["sync", "-d", *map(str, dst.iterdir())], check=True)

        cp.append(timed(run_cp))
        reg = LocalRegistry(work / f"reg{i}", durable=durable)  # a fresh registry: every byte is stored
        push.append(timed(lambda: reg.push(src, name="big", task="bench")))
        pull.append(timed(lambda: reg.pull("big", work / f"pulled{i}")))
        for p in (dst, work / f"reg{i}", work / f"pulled{i}"):
            shutil.rmtree(p)
    med = {k: statistics.median(v) for k, v in (("cp", cp), ("push", push), ("pull", pull))}
    return {
        "durable": durable,
        "baseline": "cp -r, then sync -d of the copies" if durable else "cp -r",
        "adapter_bytes": size,
        "cp_s": round(med["cp"], 4),
        "push_s": round(med["push"], 4),
        "pull_s": round(med["pull"], 4),
        "push_MBps": round(size / med["push"] / 1e6, 1),
        "pull_MBps": round(size / med["pull"] / 1e6, 1),
        "cp_MBps": round(size / med["cp"] / 1e6, 1),
        "push_speed_vs_cp": round(med["cp"] / med["push"], 3),
        "pull_speed_vs_cp": round(med["cp"] / med["pull"], 3),
        "goal": ">= 0.5 for both",
    }


def sha256_floor(megabytes: int) -> dict:
    """How fast this CPU hashes: no store that verifies content can be faster than this."""
    import hashlib

    data = os.urandom(megabytes * 1024 * 1024)
    t = min(timed(lambda: hashlib.sha256(data).digest()) for _ in range(3))
    return {"sha256_MBps": round(len(data) / t / 1e6, 1)}


def bench_list(work: Path, versions: int, rounds: int) -> dict:
    """Index with `versions` versions (100 per name), built from one real push."""
    root = work / "big-index"
    reg = LocalRegistry(root)
    src = big_lora(work / "small", 1, seed=1)
    template = reg.push(src, name="seed", task="bench").to_dict()
    index = json.loads((root / "registry.json").read_text())
    per_name = 100
    for n in range(versions // per_name):
        name = f"adapter-{n:04d}"
        entry = {"versions": {}, "tags": {"latest": per_name}}
        for v in range(1, per_name + 1):
            entry["versions"][str(v)] = dict(template, name=name, version=v, task=f"task-{n % 7}")
        index["adapters"][name] = entry
    del index["adapters"]["seed"]
    (root / "registry.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    cmd = [sys.executable, "-m", "adapterhub.cli", "list", "--registry", str(root)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    table = [timed(lambda: subprocess.run(cmd, check=True, capture_output=True, env=env)) for _ in range(rounds)]
    as_json = [timed(lambda: subprocess.run(cmd + ["--json"], check=True, capture_output=True, env=env))
               for _ in range(rounds)]
    filtered = [timed(lambda: subprocess.run(cmd + ["--task", "task-3"], check=True, capture_output=True, env=env))
                for _ in range(rounds)]
    startup = [timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)) for _ in range(rounds)]
    return {
        "versions": versions,
        "index_bytes": (root / "registry.json").stat().st_size,
        "list_table_s": round(statistics.median(table), 3),
        "list_json_s": round(statistics.median(as_json), 3),
        "list_filtered_s": round(statistics.median(filtered), 3),
        "python_startup_s": round(statistics.median(startup), 3),
        "goal": "< 1 s, process start-up included",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megabytes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp folder on /tmp's disk)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adapterhub-bench-", dir=args.workdir))
    try:
        adapter = big_lora(work / "adapter", args.megabytes, seed=0)
        result = {
            "push_pull_durable": bench_push_pull(work, adapter, args.rounds, durable=True),
            "push_pull_no_fsync": bench_push_pull(work, adapter, args.rounds, durable=False),
            "hash_floor": sha256_floor(args.megabytes),
            "list": bench_list(work, args.versions, args.rounds),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
