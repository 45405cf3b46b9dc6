"""Registry speed: push and pull of a 100 MB adapter against `cp` of the same files on the same
disk. (How commands scale with the number of versions: bench/registry_scale.py.)

Prints one JSON document. Rounds interleave the contenders so machine noise hits them alike;
figures are medians.

    python bench/registry_bench.py [--megabytes 100] [--rounds 5]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megabytes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp folder on /tmp's disk)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adapterhub-bench-", dir=args.workdir))
    try:
        adapter = big_lora(work / "adapter", args.megabytes, seed=0)
        result = {
            "push_pull_durable": bench_push_pull(work, adapter, args.rounds, durable=True),
            "push_pull_no_fsync": bench_push_pull(work, adapter, args.rounds, durable=False),
            "hash_floor": sha256_floor(args.megabytes),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
