"""Shared by the index tests: many processes pushing at once, and a registry of the old format."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.cli.output import emit_json
from adapterhub.registry import AdapterVersion, LocalRegistry


def run_cli(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def push_from_processes(root: Path, folder: Path, processes: int, index: str | None = None) -> list[int]:
    """``processes`` forked processes push ``folder`` as ``shared`` at the same moment; returns
    their exit codes."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(processes)

    def pusher(i: int) -> None:
        reg = LocalRegistry(root, durable=False, index=index)
        start.wait()
        reg.push(folder, name="shared", task="t", description=f"writer-{i}")

    procs = [ctx.Process(target=pusher, args=(i,)) for i in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def seed_every_kind(root: Path, tiny_base: Path, make_lora, make_prompt, index: str | None = None) -> dict[str, Path]:
    """A registry holding every kind of record: LoRA versions with a gap (one removed), a soft
    prompt, moved tags, metrics set after the push, a training record, and a merged-as-adapter
    version with lineage. Returns the source folder of each pushed ref."""
    reg = ["--registry", str(root)]
    sources = {"sent@1": make_lora("l1"), "sent@2": make_lora("l2", seed=1), "style@1": make_prompt("p1")}
    run_cli("push", str(sources["sent@1"]), "--name", "sent", "--task", "sentiment", "--tag", "prod",
            "--description", "positive or negative", *reg, *(["--index", index] if index else []))
    run_cli("push", str(sources["sent@2"]), "--name", "sent", "--task", "sentiment", "--tag", "candidate", *reg)
    run_cli("push", str(sources["sent@2"]), "--name", "sent", "--task", "sentiment", "--tag", "next", *reg)
    run_cli("push", str(sources["sent@1"]), "--name", "sent", "--task", "sentiment", *reg)
    sources["sent@3"], sources["sent@4"] = sources["sent@2"], sources["sent@1"]
    run_cli("rm", "sent@2", *reg)  # a gap: versions 1, 3, 4
    run_cli("tag", "sent@3", "prod", *reg)  # a moved tag
    run_cli("push", str(sources["style@1"]), "--name", "style", "--task", "style", *reg)
    registry = LocalRegistry(root, index=index)
    registry.set_metrics("sent@1", {"accuracy": 0.91, "loss": 0.25})
    registry.push(sources["sent@2"], name="trained", task="sentiment", training={"steps": 3, "lr": 0.001},
                  lineage=[{"ref": "sent@1", "digest": "sha256:" + "0" * 64}])
    sources["trained@1"] = sources["sent@2"]
    run_cli("merge", "sent@1", "sent@3", "--base", str(tiny_base), "--weights", "0.6,0.4", "--as-adapter",
            "--rank", "4", "--name", "combo", *reg)
    return sources


def make_legacy(root: Path, tiny_base: Path, make_lora, make_prompt) -> tuple[dict[str, Path], list[AdapterVersion], bytes]:
    """The registry ``seed_every_kind`` makes, turned into the old format by hand: its sources,
    versions and the old ``registry.json`` bytes."""
    sources = seed_every_kind(root, tiny_base, make_lora, make_prompt)
    reg = LocalRegistry(root)
    versions = reg.list(limit=None)
    tags: dict[str, dict[str, int]] = {}
    for v in versions:
        for t in v.tags:
            tags.setdefault(v.name, {})[t] = v.version
    reg._index().close()
    for p in root.glob("index.sqlite*"):
        p.unlink()
    return sources, versions, write_legacy(root, versions, tags)


def check_sixteen_landed(root: Path):
    """After ``push_from_processes(root, ..., 16)``: versions 1..16 of ``shared``, one per writer;
    returns ``verify``'s report."""
    reg = LocalRegistry(root)
    versions = reg.list(name="shared")
    assert [v.version for v in versions] == list(range(1, 17))
    assert sorted(v.description for v in versions) == sorted(f"writer-{i}" for i in range(16))
    return reg.verify()


def write_legacy(root: Path, versions: list[AdapterVersion], tags: dict[str, dict[str, int]]) -> bytes:
    """Write ``root/registry.json`` in the old format, as the old code wrote it (the whole index,
    compact, sorted keys); returns its bytes."""
    adapters: dict[str, dict] = {}
    for v in versions:
        entry = adapters.setdefault(v.name, {"versions": {}, "tags": tags[v.name]})
        entry["versions"][str(v.version)] = v.to_dict()
    body = (json.dumps({"schema_version": 1, "adapters": adapters}, separators=(",", ":"), sort_keys=True) + "\n").encode()
    (root / "registry.json").write_bytes(body)
    return body


def legacy_show_outputs(doc: dict) -> dict[str, str]:
    """``show REF --json`` of every version and tag of an old index, as the old code printed it."""
    out: dict[str, str] = {}
    for name, entry in doc["adapters"].items():
        for key, rec in entry["versions"].items():
            tags = tuple(sorted(t for t, v in entry["tags"].items() if v == int(key)))
            out[f"{name}@{key}"] = _emitted(AdapterVersion.from_dict(rec, tags).to_json())
        for tag, v in entry["tags"].items():
            out[f"{name}:{tag}"] = out[f"{name}@{v}"]
    return out


def _emitted(doc: dict) -> str:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        emit_json(doc)
    return buf.getvalue()
