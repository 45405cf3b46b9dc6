"""`rm name:tag` and `untag` remove a tag and keep its version (as `docker rmi` does), against a
registry folder and a hub on loopback alike; versions go by number or digest, bad input changes nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.errors import InvalidName
from adapterhub.registry import LocalRegistry
from adapterhub.remote import RemoteRegistry
from conftest import snapshot


@dataclass
class Where:
    """A registry as the CLI names it, and the folder that holds it (to snapshot)."""

    args: list[str]
    root: Path
    url: str | None = None


@pytest.fixture(autouse=True)
def _no_stored_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture(params=["folder", "hub"])
def where(request, tmp_path) -> Where:
    if request.param == "folder":
        root = tmp_path / "reg"
        return Where(["--registry", str(root)], root)
    hub = request.getfixturevalue("hub")
    return Where(["--registry", hub.url, "--token", hub.write_token], hub.registry.root, hub.url)


@pytest.fixture
def seeded(where, make_lora) -> Where:
    return seed(where, make_lora)


def seed(where: Where, make_lora) -> Where:
    """sent@1 tagged prod and stable, sent@2 (latest) tagged beta."""
    run(where, "push", str(make_lora("a")), "--name", "sent", "--task", "t", "--tag", "prod", "--tag", "stable")
    run(where, "push", str(make_lora("b", seed=1)), "--name", "sent", "--task", "t", "--tag", "beta")
    return where


def run(where: Where, *args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [*args, *where.args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def run_json(where: Where, *args: str):
    return json.loads(run(where, *args, "--json").output)


def tags_by_version(where: Where) -> dict[int, list[str]]:
    return {v["version"]: sorted(v["tags"]) for v in run_json(where, "list")}


def test_rm_name_tag_removes_only_the_tag(seeded):
    done = run_json(seeded, "rm", "sent:prod")
    assert done["removed"] == [] and done["untagged"] == ["sent:prod"]
    assert tags_by_version(seeded) == {1: ["stable"], 2: ["beta", "latest"]}
    assert run_json(seeded, "show", "sent:stable")["version"] == 1  # the version and its other tags stay
    gone = run(seeded, "show", "sent:prod", ok=False)
    assert gone.exit_code != 0 and "no tag 'prod'" in gone.output
    report = run_json(seeded, "verify")
    assert report["ok"] and report["orphans"] == []  # no weights were dropped

    said = run(seeded, "rm", "sent:stable").output.strip()
    assert said == "untagged sent:stable (sent@1 stays)"
    assert tags_by_version(seeded) == {1: [], 2: ["beta", "latest"]}


def test_untag_forms(seeded):
    moved = run_json(seeded, "untag", "sent@1", "prod")  # REF TAG: TAG must point at REF's version
    assert moved["untagged"] == ["sent:prod"] and moved["version"]["tags"] == ["stable"]
    run(seeded, "untag", "sent:beta")
    run(seeded, "untag", "sent", "stable")  # a bare name names no version: any version's tag
    assert tags_by_version(seeded) == {1: [], 2: ["latest"]}


def test_versions_go_by_number_digest_or_all(seeded):
    digest = run_json(seeded, "show", "sent@1")["digest"]
    assert run_json(seeded, "rm", f"sent@{digest[:15]}")["removed"] == ["sent@1"]
    assert tags_by_version(seeded) == {2: ["beta", "latest"]}  # sent@1's tags went with it
    assert run_json(seeded, "rm", "sent@2")["removed"] == ["sent@2"]
    run(seeded, "push", str(seeded.root.parent / "a"), "--name", "sent", "--task", "t")
    run(seeded, "push", str(seeded.root.parent / "b"), "--name", "sent", "--task", "t")
    assert len(run_json(seeded, "rm", "sent", "--all")["removed"]) == 2
    assert run_json(seeded, "list") == []


BAD_INPUT = [
    (("rm", "sent"), "sent@N"),  # bare: which version?
    (("rm", "sent:latest"), "follows the newest version"),
    (("untag", "sent:latest"), "follows the newest version"),
    (("rm", "sent:nosuch"), "no tag 'nosuch'"),
    (("untag", "sent@2", "prod"), "points at sent@1, not sent@2"),
    (("untag", "sent@1"), "say which tag"),
    (("untag", "sent"), "say which tag"),
    (("untag", "sent:prod", "sha256x"), "invalid tag"),
    (("rm", "sent:prod", "--all"), "--all takes a bare adapter name"),
    (("rm", "other:prod"), "no adapter named 'other'"),
    (("untag", "sent@9", "prod"), "no version 9"),
    (("rm", "sent:"), "reference"),
]


def test_bad_input_is_one_line_and_changes_nothing(seeded):
    before = snapshot(seeded.root)
    for args, says in BAD_INPUT:
        result = run(seeded, *args, ok=False)
        assert result.exit_code != 0, args
        assert len(result.output.strip().splitlines()) == 1 and says in result.output, (args, result.output)
        assert snapshot(seeded.root) == before, args


def test_library_remove_refuses_a_tag_reference(seeded):
    """Python callers and the hub's DELETE /api/versions/<ref> route cannot drop a version by a tag."""
    before = snapshot(seeded.root)
    registry = RemoteRegistry(seeded.url, token=seeded.args[-1]) if seeded.url else LocalRegistry(seeded.root)
    with pytest.raises(InvalidName, match="names a tag, not a version.*sent@1"):
        registry.remove("sent:prod")
    assert snapshot(seeded.root) == before


def test_hub_untag_needs_a_write_token(hub, make_lora):
    where = seed(Where(["--registry", hub.url, "--token", hub.write_token], hub.registry.root), make_lora)
    before = snapshot(where.root)
    for token_args in ([], ["--token", hub.read_token]):
        result = CliRunner().invoke(cli, ["untag", "sent:prod", "--registry", hub.url, *token_args],
                                    env={"ADAPTERHUB_TOKEN": None})
        assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
        assert "write scope" in result.output or "needs write" in result.output, result.output
    assert snapshot(where.root) == before
    shown = CliRunner().invoke(cli, ["show", "sent:prod", "--registry", hub.url, "--json"],
                               env={"ADAPTERHUB_TOKEN": None})  # reads need no token
    assert shown.exit_code == 0 and json.loads(shown.output)["version"] == 1
