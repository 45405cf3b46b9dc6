"""Remote hub speed: push and pull of a 100 MB adapter over loopback HTTP against the same calls on a
local registry path, plus a re-push whose objects are already on the hub (bytes sent must be 0).

The hub runs as ``adapterhub hub serve`` in its own process (as it would be deployed), on a fresh
registry each round; both registries are durable (fsync). Rounds interleave local and remote so
machine noise hits them alike; figures are medians. Prints one JSON document.

    python bench/remote_bench.py [--megabytes 100] [--rounds 3]
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
os.environ["HF_HUB_OFFLINE"] = "1"  # the adapter's base is not on this machine: do not look for it online

from adapterhub.blobstore import sha256_file  # noqa: E402
from adapterhub.registry import LocalRegistry  # noqa: E402
from adapterhub.remote import RemoteRegistry  # noqa: E402
from adapterhub.tokens import TokenStore  # noqa: E402
from tests.test_registry_concurrency import big_lora  # noqa: E402

ADAPTERHUB = str(Path(sys.executable).parent / "adapterhub")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def start_hub(root: Path) -> tuple[subprocess.Popen, str, str]:
    token, _ = TokenStore(root).create("write", "bench")
    proc = subprocess.Popen([ADAPTERHUB, "hub", "serve", "--registry", str(root), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "serving registry" not in line:
        raise RuntimeError(f"hub did not start: {line}")
    return proc, line.split(" on ")[1].split()[0], token


def stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "objects" / "sha256").rglob("*") if p.is_file())


def bench(work: Path, src: Path, rounds: int) -> dict:
    size = sum(f.stat().st_size for f in src.iterdir())
    t: dict[str, list[float]] = {
        k: [] for k in ("hash", "local_push", "local_pull", "remote_push", "remote_pull", "remote_repush")
    }
    repush_sent, repush_stored = [], []
    for i in range(rounds):
        t["hash"].append(timed(lambda: [sha256_file(p) for p in src.iterdir()]))  # the client's share of a push
        reg = LocalRegistry(work / f"local{i}")
        t["local_push"].append(timed(lambda: reg.push(src, name="big", task="bench")))
        t["local_pull"].append(timed(lambda: reg.pull("big", work / f"lpulled{i}")))

        root = work / f"hub{i}"
        proc, url, token = start_hub(root)
        try:
            with RemoteRegistry(url, token=token, progress=False, timeout=300) as remote:
                t["remote_push"].append(timed(lambda: remote.push(src, name="big", task="bench")))
                t["remote_pull"].append(timed(lambda: remote.pull("big", work / f"rpulled{i}")))
                before = stored_bytes(root)
                t["remote_repush"].append(timed(lambda: remote.push(src, name="again", task="bench")))
                repush_sent.append(remote.last_transfer.sent_bytes)
                repush_stored.append(stored_bytes(root) - before)
        finally:
            proc.terminate()
            proc.wait(30)
            proc.stderr.close()
        for p in (work / f"local{i}", work / f"lpulled{i}", root, work / f"rpulled{i}"):
            shutil.rmtree(p)
    med = {k: statistics.median(v) for k, v in t.items()}
    mb = size / 1e6
    return {
        "adapter_bytes": size,
        "rounds": rounds,
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        "local_push_MBps": round(mb / med["local_push"], 1),
        "remote_push_MBps": round(mb / med["remote_push"], 1),
        "local_pull_MBps": round(mb / med["local_pull"], 1),
        "remote_pull_MBps": round(mb / med["remote_pull"], 1),
        "remote_push_vs_local_x": round(med["remote_push"] / med["local_push"], 2),
        "remote_pull_vs_local_x": round(med["remote_pull"] / med["local_pull"], 2),
        "repush_object_bytes_sent": max(repush_sent),
        "repush_object_bytes_stored": max(repush_stored),
        "repush_vs_push_x": round(med["remote_repush"] / med["remote_push"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megabytes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="adapterhub-remote-bench-") as tmp:
        work = Path(tmp)
        src = big_lora(work / "src", args.megabytes, seed=0)
        result = {"machine": f"{os.cpu_count()} CPUs", "python": sys.version.split()[0], **bench(work, src, args.rounds)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
