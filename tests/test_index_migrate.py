"""``adapterhub migrate``: a registry of the old format (the whole index in registry.json) becomes
the manifest and an index, losing nothing; until then every other command says so."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from index_helpers import legacy_show_outputs, make_legacy, run_cli

from adapterhub import atomic_file
from adapterhub.index import migrate, sqlite
from adapterhub.index.manifest import Manifest, load_manifest


REFUSING = [
    ("list",), ("show", "sent"), ("tag", "sent@1", "x"), ("rm", "sent@1"), ("verify",), ("gc",),
]


def test_migrate_keeps_every_version_tag_metric_lineage_and_byte(tmp_path, tiny_base, make_lora, make_prompt):
    root = tmp_path / "reg"
    sources, versions, legacy = make_legacy(root, tiny_base, make_lora, make_prompt)
    before = legacy_show_outputs(json.loads(legacy))
    kinds = {(v.adapter_type, bool(v.lineage), bool(v.metrics), v.training is not None) for v in versions}
    assert {("lora", False, True, False), ("prompt_tuning", False, False, False), ("lora", True, False, True),
            ("lora", True, False, False)} <= kinds  # LoRA with metrics, soft prompt, trained, merged-as-adapter
    assert [v.ref for v in versions if v.name == "sent"] == ["sent@1", "sent@3", "sent@4"]

    for args in REFUSING + [("push", str(sources["sent@1"]), "--name", "x", "--task", "t"),
                            ("pull", "sent", "-o", str(tmp_path / "nowhere"))]:
        result = run_cli(*args, "--registry", str(root), ok=False)
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and f"adapterhub migrate --registry {root}" in lines[0], (args, result.output)
    assert (root / "registry.json").read_bytes() == legacy
    assert not list(root.glob("index.sqlite*"))

    report = json.loads(run_cli("migrate", "--registry", str(root), "--json").output)
    assert report == {"migrated": True, "index": "index.sqlite", "adapters": 4, "versions": len(versions),
                      "tags": sum(len(v.tags) for v in versions), "backup": str(root / "registry.v1.json")}
    assert isinstance(load_manifest(root / "registry.json"), Manifest)
    assert (root / "registry.v1.json").read_bytes() == legacy

    for ref, shown in before.items():
        assert run_cli("show", ref, "--json", "--registry", str(root)).output == shown, ref
    for v in versions:
        out = tmp_path / "pulled" / v.ref
        run_cli("pull", v.ref, "-o", str(out), "--registry", str(root))
        for f in v.files:
            data = (out / f.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f.sha256
            if v.ref in sources:
                assert data == (sources[v.ref] / f.path).read_bytes()
    report = json.loads(run_cli("verify", "--json", "--registry", str(root)).output)
    assert report["ok"] and report["checked_versions"] == len(versions) and not report["orphans"]

    again = run_cli("migrate", "--registry", str(root))
    assert "nothing to do" in again.output
    assert run_cli("push", str(sources["sent@1"]), "--name", "sent", "--task", "sentiment", "--registry", str(root),
                   "--json").output.count('"version": 5') == 1  # numbering goes on after the gap and the migration


def test_a_legacy_index_that_does_not_add_up_is_refused_and_left_as_it_was(tmp_path):
    root = tmp_path / "reg"
    root.mkdir()
    record = {"name": "other", "version": 1, "digest": "sha256:" + "0" * 64, "adapter_type": "lora", "files": []}
    body = json.dumps({"schema_version": 1, "adapters": {"a": {"versions": {"1": record}, "tags": {"latest": 1}}}})
    (root / "registry.json").write_text(body)
    result = run_cli("migrate", "--registry", str(root), ok=False)
    assert result.exit_code != 0 and "a@1 is recorded as other@1" in result.output
    assert (root / "registry.json").read_text() == body
    assert sorted(p.name for p in root.iterdir()) == ["registry.json", "registry.lock"]


@pytest.mark.parametrize("where", ["missing", "remote"])
def test_migrate_needs_a_registry_folder(tmp_path, where):
    target = str(tmp_path / "nothing") if where == "missing" else "http://127.0.0.1:9"
    result = run_cli("migrate", "--registry", target, ok=False)
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1


def test_the_index_is_durably_named_before_the_manifest_names_it(tmp_path, monkeypatch):
    """The manifest's rename is the commit point: the index's own rename must reach the disk first,
    or a power cut can leave a manifest naming an index that is not there."""
    root = tmp_path / "reg"
    root.mkdir()
    (root / "registry.json").write_text(json.dumps({"schema_version": 1, "adapters": {}}))
    events: list[tuple[str, str]] = []
    real_replace, real_fsync = os.replace, atomic_file.fsync_path

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    def fsync(path):
        events.append(("fsync", Path(path).name))
        real_fsync(path)

    monkeypatch.setattr(os, "replace", replace)
    for module in (atomic_file, migrate, sqlite):
        monkeypatch.setattr(module, "fsync_path", fsync)
    migrate.migrate_registry(root, durable=True)
    placed, named = events.index(("replace", "index.sqlite")), events.index(("replace", "registry.json"))
    assert ("fsync", root.name) in events[placed:named]
    assert events[named + 1:] == [("fsync", root.name)]
