"""Registry commands against registry size: the old JSON index and the new index side by side.

For each size (versions, 100 per name) a registry is generated fast by writing index rows
directly (every version shares the objects of one real push), then each command runs as a whole
CLI process, as people and scripts run it: ``push`` (one more version of a small adapter), ``show``,
``list --task T`` (the new index: ``--limit 50``; the old CLI has no paging) and ``pull``. The old
JSON index is the code of commit ``OLD_COMMIT`` (before the index moved out of registry.json),
taken with ``git archive`` and run from a temporary folder. Then 16 processes push at once into
the 100k registry (SQLite, and PostgreSQL when a throwaway server can be started here).

Prints one JSON document (also written to --out): per size and index, median seconds per command
and the ratio to the same command at the smallest size.

    python bench/registry_scale.py [--sizes 1000,10000,100000,1000000] [--json-max 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from adapterhub.index.sqlite import SqliteIndex  # noqa: E402
from adapterhub.registry import LocalRegistry  # noqa: E402
from pg_server import new_database, postgres_server, unavailable  # noqa: E402
from tests.test_registry_concurrency import big_lora  # noqa: E402

OLD_COMMIT = "e3bf31f"  # the last commit whose registry kept its whole index in registry.json
PER_NAME = 100
TASKS = 10
COMMANDS = ("push", "show", "list", "pull")
os.environ["HF_HUB_OFFLINE"] = "1"  # the adapters' base is not on this machine: no Hub lookups, here or in children
ENV = dict(os.environ)


def template_record(work: Path) -> tuple[Path, dict[str, Any], Path]:
    """One real push of a small adapter: its record (the pattern of every generated version) and
    its objects (which every generated version shares)."""
    src = big_lora(work / "small", 1, seed=1)
    seed_root = work / "seed"
    record = LocalRegistry(seed_root).push(src, name="seed", task="task-0").to_dict()
    return src, record, seed_root / "objects"


def generated(record: dict[str, Any], versions: int) -> Iterator[dict[str, Any]]:
    for i in range(versions):
        n = i // PER_NAME
        yield dict(record, name=f"adapter-{n:05d}", version=i % PER_NAME + 1, task=f"task-{n % TASKS}")


def latest_tags(versions: int) -> list[tuple[str, str, int]]:
    names = (versions + PER_NAME - 1) // PER_NAME
    return [(f"adapter-{n:05d}", "latest", min(PER_NAME, versions - n * PER_NAME)) for n in range(names)]


def build_new(root: Path, src: Path, record: dict[str, Any], objects: Path, versions: int,
              index: str | None = None) -> None:
    """A registry whose index holds ``versions`` rows, written directly by the migration's bulk
    load; a first push and its removal create the manifest and the (empty) index."""
    root.mkdir(parents=True)
    shutil.copytree(objects, root / "objects")
    reg = LocalRegistry(root, index=index)
    reg.push(src, name="bootstrap", task="none")
    reg.remove("bootstrap", all_versions=True)
    idx = reg._index()
    assert idx is not None
    rows, tags = generated(record, versions), latest_tags(versions)
    if isinstance(idx, SqliteIndex):  # a fresh file: bulk loads are faster without the old pages
        idx.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{idx.path}{suffix}").unlink(missing_ok=True)
        idx.build(idx.path, lambda staged: staged.load(rows, tags))
    else:
        idx.load(rows, tags)


def build_old(root: Path, record: dict[str, Any], objects: Path, versions: int) -> None:
    """The same registry in the old format: every version inside registry.json."""
    root.mkdir(parents=True)
    shutil.copytree(objects, root / "objects")
    adapters: dict[str, Any] = {}
    for rec in generated(record, versions):
        entry = adapters.setdefault(rec["name"], {"versions": {}, "tags": {}})
        entry["versions"][str(rec["version"])] = rec
        entry["tags"]["latest"] = rec["version"]
    doc = {"schema_version": 1, "adapters": adapters}
    (root / "registry.json").write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")


def old_code(work: Path) -> Path:
    """The CLI as of ``OLD_COMMIT``, laid out as an importable ``adapterhub`` package."""
    archive = work / "old.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT, "hub", "cli", "server"], stdout=f, check=True)
    tree = work / "old-src"
    with tarfile.open(archive) as tar:
        tar.extractall(tree)
    pkg = work / "old-pkg" / "adapterhub"
    shutil.copytree(tree / "hub", pkg)
    shutil.copytree(tree / "cli", pkg / "cli")
    shutil.copytree(tree / "server", pkg / "server")
    return pkg.parent


def cli(args: list[str], pythonpath: Path | None) -> float:
    env = dict(ENV, PYTHONPATH=str(pythonpath)) if pythonpath else ENV
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "adapterhub.cli", *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return elapsed


def command_lines(root: Path, src: Path, versions: int, work: Path, old: bool) -> dict[str, list[str]]:
    """The command line of each measured command, the registry holding ``versions`` versions."""
    name = f"adapter-{(versions // PER_NAME) // 2:05d}"
    reg = ["--registry", str(root)]
    return {
        "push": ["push", str(src), "--name", name, "--task", "task-3", *reg],
        "show": ["show", f"{name}@50", "--json", *reg],
        "list": ["list", "--task", "task-3", "--json", *reg] + ([] if old else ["--limit", "50"]),
        "pull": ["pull", f"{name}@50", "-o", str(work / f"pulled-{root.name}"), "--force", *reg],
    }


def time_commands(root: Path, src: Path, versions: int, work: Path, repeat: int, old: Path | None) -> dict[str, float]:
    """Median seconds of each command (``repeat`` runs each)."""
    lines = command_lines(root, src, versions, work, old is not None)
    return {cmd: round(statistics.median(cli(lines[cmd], old) for _ in range(repeat)), 3) for cmd in COMMANDS}


def forked_pushes(root: Path, src: Path, processes: int, each: int) -> dict[str, Any]:
    """The index's own write rate: ``processes`` forked library processes (no interpreter start-up)
    pushing ``each`` versions apiece at once."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(processes + 1)

    def pusher() -> None:
        reg = LocalRegistry(root)
        start.wait()
        for _ in range(each):
            reg.push(src, name="forked", task="task-2")

    procs = [ctx.Process(target=pusher) for _ in range(processes)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    versions = [v.version for v in LocalRegistry(root).list(name="forked")]
    return {"processes": processes, "pushes": processes * each, "wall_s": round(wall, 3),
            "pushes_per_s": round(processes * each / wall, 1),
            "versions_contiguous": versions == list(range(1, processes * each + 1)),
            "all_exited_0": all(p.exitcode == 0 for p in procs)}


def concurrent_pushes(root: Path, src: Path, n: int, index: str | None) -> dict[str, Any]:
    """``n`` CLI processes pushing at once; every one must land, versions contiguous, verify clean."""
    reg = LocalRegistry(root, index=index)
    before = len(reg.list(name="concurrent"))
    args = ["push", str(src), "--name", "concurrent", "--task", "task-1", "--registry", str(root)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda _: cli(args, None), range(n)))
    wall = time.perf_counter() - t0
    versions = [v.version for v in reg.list(name="concurrent")]
    report = reg.verify()
    return {
        "processes": n,
        "wall_s": round(wall, 3),
        "pushes_per_s": round(n / wall, 2),
        "all_landed": len(versions) == before + n,
        "versions_contiguous": versions == list(range(1, before + n + 1)),
        "verify_ok": report.ok,
        "checked_versions": report.checked_versions,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--json-max", type=int, default=100_000,
                    help="largest size measured with the old JSON index (1M versions is 1.3 GB of JSON per command)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--old-repeat", type=int, default=1, help="repeats of the old JSON index's commands")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--concurrency-size", type=int, default=100_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "registry_scale.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="adapterhub-scale-", dir=args.workdir))
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"{platform.platform()}",
        "versions_per_name": PER_NAME,
        "old_index": f"registry.json as of commit {OLD_COMMIT}",
        "sizes": {},
    }
    try:
        src, record, objects = template_record(work)
        old = old_code(work)
        roots: dict[int, dict[str, Path]] = {}
        for size in sizes:  # build everything first, then time interleaved: noise hits all sizes alike
            row: dict[str, Any] = {}
            roots[size] = {"sqlite": work / f"new-{size}"}
            t0 = time.perf_counter()
            build_new(roots[size]["sqlite"], src, record, objects, size)
            row["new_build_s"] = round(time.perf_counter() - t0, 1)
            row["new_index_bytes"] = (roots[size]["sqlite"] / "index.sqlite").stat().st_size
            if size <= args.json_max:
                roots[size]["json_old"] = work / f"old-{size}"
                build_old(roots[size]["json_old"], record, objects, size)
                row["old_index_bytes"] = (roots[size]["json_old"] / "registry.json").stat().st_size
            result["sizes"][str(size)] = row
            print(json.dumps({size: row}), file=sys.stderr, flush=True)
        samples: dict[tuple[int, str, str], list[float]] = {}
        for round_ in range(args.repeat):
            for size in sizes:
                for kind, root in roots[size].items():
                    if kind == "json_old" and round_ >= args.old_repeat:
                        continue
                    lines = command_lines(root, src, size, work, kind == "json_old")
                    for cmd in COMMANDS:
                        elapsed = cli(lines[cmd], old if kind == "json_old" else None)
                        samples.setdefault((size, kind, cmd), []).append(elapsed)
        for (size, kind, cmd), values in samples.items():
            result["sizes"][str(size)].setdefault(kind, {})[cmd] = round(statistics.median(values), 3)
        smallest = str(sizes[0])
        for row in result["sizes"].values():
            for kind in ("sqlite", "json_old"):
                if kind in row and kind in result["sizes"][smallest]:
                    base = result["sizes"][smallest][kind]
                    row[f"{kind}_vs_smallest"] = {c: round(row[kind][c] / base[c], 2) for c in COMMANDS}
        for size in sizes:
            if "json_old" in roots[size]:
                shutil.rmtree(roots[size]["json_old"])
        if args.concurrency_size in roots:
            root = roots[args.concurrency_size]["sqlite"]
            result["sizes"][str(args.concurrency_size)]["concurrent_sqlite"] = {
                "cli": concurrent_pushes(root, src, args.concurrency, None),
                "forked_library": forked_pushes(root, src, args.concurrency, 8),
            }
        why_not = unavailable()
        if why_not is None and str(args.concurrency_size) in result["sizes"]:
            with postgres_server() as server:
                url = new_database(server, "bench")
                pg_root = work / "pg"
                build_new(pg_root, src, record, objects, args.concurrency_size, index=url)
                result["postgresql"] = {
                    "versions": args.concurrency_size,
                    "commands": time_commands(pg_root, src, args.concurrency_size, work, args.repeat, None),
                    "concurrent_cli": concurrent_pushes(pg_root, src, args.concurrency, None),
                    "concurrent_forked_library": forked_pushes(pg_root, src, args.concurrency, 8),
                }
        else:
            result["postgresql"] = {"skipped": why_not or "concurrency size not measured"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
