"""A shared index in a real PostgreSQL server (a throwaway cluster the tests start): the same
answers as the embedded index, many processes pushing at once, migration into it."""

from __future__ import annotations

import itertools
import json

import pytest
from index_helpers import (check_sixteen_landed, legacy_show_outputs, make_legacy, push_from_processes, run_cli,
                           seed_every_kind)
from pg_server import new_database, postgres_server, unavailable

from adapterhub.index import open_index
from adapterhub.index.manifest import Manifest, index_spec, load_manifest
from adapterhub.registry import LocalRegistry

_REASON = unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"no PostgreSQL server: {_REASON}")
_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server():
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_url(pg_server):
    """A fresh database: one registry's index."""
    return new_database(pg_server, f"reg{next(_names)}")


def _public(versions):
    """What must agree between engines: everything but the push time."""
    return [{k: v for k, v in x.to_json().items() if k != "created"} for x in versions]


def test_same_answers_as_the_embedded_index(tmp_path, tiny_base, make_lora, make_prompt, pg_url):
    seed_every_kind(tmp_path / "pg", tiny_base, make_lora, make_prompt, index=pg_url)
    seed_every_kind(tmp_path / "lite", tiny_base, make_lora, make_prompt)
    manifest = load_manifest(tmp_path / "pg" / "registry.json")
    assert manifest.index == {"engine": "postgresql", "url": pg_url}
    assert not (tmp_path / "pg" / "index.sqlite").exists()
    pg, lite = LocalRegistry(tmp_path / "pg"), LocalRegistry(tmp_path / "lite")
    fingerprint = lite.resolve("sent").base["fingerprint"][:14]
    for query in ({}, {"task": "sentiment"}, {"adapter_type": "prompt_tuning"}, {"tag": "latest"}, {"name": "sent"},
                  {"base": fingerprint}, {"limit": 2, "offset": 1}, {"after": "sent@3", "limit": 2}, {"tag": "prod"}):
        assert _public(pg.list(**query)) == _public(lite.list(**query)), query
    for ref in ("sent", "sent:prod", "sent@1", "style", "combo", "trained"):
        assert _public([pg.resolve(ref)]) == _public([lite.resolve(ref)])
    for registry in (pg, lite):
        registry.remove("sent@4")
        assert registry.resolve("sent").version == 3
    assert _public(pg.list()) == _public(lite.list())
    report = pg.verify()
    assert report.ok and report.checked_versions == len(lite.list())
    missing = run_cli("show", "nope", "--registry", str(tmp_path / "pg"), ok=False)
    assert missing.exit_code != 0 and "no adapter named 'nope'" in missing.output


def test_sixteen_processes_push_at_once_into_one_index(tmp_path, make_lora, pg_url):
    root = tmp_path / "reg"
    LocalRegistry(root, index=pg_url).push(make_lora(), name="first", task="t")
    assert push_from_processes(root, make_lora(), 16) == [0] * 16
    report = check_sixteen_landed(root)
    assert report.ok and not report.orphans


def test_migrate_a_json_registry_into_postgresql(tmp_path, tiny_base, make_lora, make_prompt, pg_url):
    root = tmp_path / "reg"
    _, versions, legacy = make_legacy(root, tiny_base, make_lora, make_prompt)
    before = legacy_show_outputs(json.loads(legacy))
    report = json.loads(run_cli("migrate", "--registry", str(root), "--index", pg_url, "--json").output)
    assert report["migrated"] and report["versions"] == len(versions)
    for ref, shown in before.items():
        assert run_cli("show", ref, "--json", "--registry", str(root)).output == shown, ref
    again = run_cli("migrate", "--registry", str(tmp_path / "other"), "--index", pg_url, ok=False)
    assert again.exit_code != 0


def test_an_unreachable_server_fails_in_one_line(tmp_path, make_lora):
    root = tmp_path / "reg"
    url = "postgresql://postgres@/none?host=/nonexistent-socket-dir&port=1"
    result = run_cli("push", str(make_lora()), "--name", "a", "--task", "t", "--registry", str(root), "--index", url,
                     ok=False)
    assert result.exit_code != 0 and "cannot reach the index" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_migration_killed_after_its_commit_runs_again_to_the_end(tmp_path, pg_url):
    """The index's transaction committed, the manifest was never written: running migrate again
    finishes the job instead of refusing a database that holds exactly the migrated rows."""
    root = tmp_path / "reg"
    root.mkdir()
    record = {"name": "a", "version": 2, "digest": "sha256:" + "0" * 64, "adapter_type": "lora", "task": "t",
              "files": [], "created": "2024-01-01T00:00:00Z"}
    (root / "registry.json").write_text(json.dumps({"schema_version": 1, "adapters": {
        "a": {"versions": {"2": record}, "tags": {"latest": 2, "old": 1}}}}))
    committed = open_index(root, Manifest(index=index_spec(pg_url)), override=None, durable=False)
    committed.create()
    committed.load([record], [("a", "latest", 2), ("a", "old", 1)])
    report = json.loads(run_cli("migrate", "--registry", str(root), "--index", pg_url, "--json").output)
    assert report["migrated"] and report["versions"] == 1 and report["tags"] == 2
    assert LocalRegistry(root).resolve("a:latest").version == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "registry.json").write_text(json.dumps({"schema_version": 1, "adapters": {}}))
    refused = run_cli("migrate", "--registry", str(other), "--index", pg_url, ok=False)
    assert refused.exit_code != 0 and "already holds other versions" in refused.output
