"""The embedded index: a manifest people can read, pages and filters in the index, many writers."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from index_helpers import check_sixteen_landed, push_from_processes, run_cli

from adapterhub.cli.main import cli
from adapterhub.index.manifest import Manifest, load_manifest
from adapterhub.registry import LocalRegistry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def paged(tmp_path, make_lora, make_prompt):
    """Three LoRA names of four versions each (two tasks) and one soft prompt."""
    reg = LocalRegistry(tmp_path / "reg", durable=False)
    lora, soft = make_lora(), make_prompt()
    for name in ("alpha", "beta", "gamma"):
        for _ in range(4):
            reg.push(lora, name=name, task="odd" if name != "beta" else "even")
    reg.push(soft, name="delta", task="even")
    return reg


def test_first_write_creates_a_small_manifest_and_a_wal_index(paged):
    doc = json.loads((paged.root / "registry.json").read_text())
    assert doc == {"format": "adapterhub-registry", "schema_version": 2,
                   "index": {"engine": "sqlite", "path": "index.sqlite"}, "objects": "objects"}
    with sqlite3.connect(paged.root / "index.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM versions").fetchone()[0] == 13
    assert stat.S_IMODE((paged.root / "index.sqlite").stat().st_mode) == 0o644  # readable as registry.json is


def test_the_checkouts_registry_json_is_a_manifest():
    assert isinstance(load_manifest(REPO / "registry.json"), Manifest)


def test_pages_and_cursors_cover_the_listing_exactly_once(paged):
    everything = [v.ref for v in paged.list()]
    assert len(everything) == 13 and everything == sorted(everything, key=lambda r: (r.split("@")[0], int(r.split("@")[1])))
    by_offset = [v.ref for page in range(0, 13, 5) for v in paged.list(limit=5, offset=page)]
    assert by_offset == everything
    by_cursor, after = [], None
    while True:
        page = paged.list(limit=5, after=after)
        if not page:
            break
        by_cursor += [v.ref for v in page]
        after = page[-1].ref
    assert by_cursor == everything
    assert [v.ref for v in paged.list(task="odd", limit=3, offset=3)] == ["alpha@4", "gamma@1", "gamma@2"]
    assert [v.ref for v in paged.list(tag="latest")] == ["alpha@4", "beta@4", "delta@1", "gamma@4"]
    assert [v.ref for v in paged.list(adapter_type="prompt_tuning", task="even")] == ["delta@1"]
    fingerprint = paged.resolve("alpha").base["fingerprint"]
    assert len(paged.list(base=fingerprint[:13])) == 13 and paged.list(base=fingerprint[:12]) == []


def test_cli_list_pages_with_limit_page_and_after(paged):
    reg = ["--registry", str(paged.root)]
    result = CliRunner().invoke(cli, ["list", "--limit", "5", "--json", *reg])
    assert result.exit_code == 0
    assert [v["version"] for v in json.loads(result.stdout)] == [1, 2, 3, 4, 1]
    assert "next page with --after beta@1 (or --page 2)" in result.stderr
    second = json.loads(CliRunner().invoke(cli, ["list", "--limit", "5", "--page", "2", "--json", *reg]).stdout)
    assert json.loads(CliRunner().invoke(cli, ["list", "--limit", "5", "--after", "beta@1", "--json", *reg]).stdout) == second
    assert len(json.loads(run_cli("list", "--limit", "0", "--json", *reg).output)) == 13
    assert [v["name"] for v in json.loads(run_cli("list", "--tag", "latest", "--json", *reg).output)] == \
        ["alpha", "beta", "delta", "gamma"]
    for huge in (["--limit", str(10**19)], ["--limit", "100", "--page", str(10**18)]):  # past 64-bit: clamped, not "corrupt"
        assert len(json.loads(run_cli("list", *huge, "--json", *reg).output)) == (0 if "--page" in huge else 13)
    for bad in (["--page", "2", "--after", "a@1"], ["--limit", "-1"], ["--after", "alpha"], ["--page", "0"]):
        refused = run_cli("list", *bad, *reg, ok=False)
        assert refused.exit_code != 0 and "Traceback" not in refused.output


def test_sixteen_processes_push_at_once_and_all_land(tmp_path, make_lora):
    root = tmp_path / "reg"
    assert push_from_processes(root, make_lora(), 16) == [0] * 16
    report = check_sixteen_landed(root)
    assert report.ok and not report.orphans and not report.temporaries


def test_bad_index_settings_and_a_damaged_index_fail_in_one_line(paged, tmp_path, make_lora):
    reg = ["--registry", str(paged.root)]
    for args, message in ((["list", "--index", "mysql://x"], "invalid --index"),
                          (["list", "--index", "postgresql://nowhere/db"], "keeps its index in sqlite"),
                          (["list", "--index", "sqlite", "--registry", "http://127.0.0.1:9"], "applies to a registry folder")):
        result = run_cli(*args, *([] if "--registry" in args else reg), ok=False)
        assert result.exit_code != 0 and message in result.output and len(result.output.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "registry.json").write_text((paged.root / "registry.json").read_text())
    (broken / "index.sqlite").write_bytes(b"not a database" * 100)
    for args in (["list"], ["show", "a"], ["push", str(make_lora()), "--name", "a", "--task", "t"]):
        result = run_cli(*args, "--registry", str(broken), ok=False)
        assert result.exit_code != 0 and "index" in result.output and len(result.output.strip().splitlines()) == 1
    assert (broken / "index.sqlite").read_bytes() == b"not a database" * 100


def test_a_lost_index_is_a_problem_and_gc_deletes_nothing(paged):
    """A manifest naming a missing index.sqlite is not an empty registry: every object would look
    unreferenced, and gc would delete them all."""
    paged._index().close()
    for p in paged.root.glob("index.sqlite*"):
        p.unlink()
    objects = sorted(paged.store.iter_digests())
    assert objects
    reg = ["--registry", str(paged.root)]
    report = json.loads(run_cli("verify", "--json", *reg, ok=False).output)
    assert not report["ok"] and "index.sqlite, which is missing" in report["problems"][0]
    refused = run_cli("gc", *reg, ok=False)
    assert refused.exit_code != 0 and len(refused.output.strip().splitlines()) == 1
    assert "gc would delete every object" in refused.output
    assert sorted(paged.store.iter_digests()) == objects
