"""The registry commands as a script or a person uses them: exit codes, JSON documents, tables."""

from __future__ import annotations

import json
import os
import time

from click.testing import CliRunner

from adapterhub.cli.main import cli


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def run_json(*args: str):
    return json.loads(run(*args, "--json").output)


def test_push_list_show_tag_rm_gc(make_lora, make_prompt, tmp_path):
    lora, soft = make_lora("l"), make_prompt("p")
    first = run_json("push", str(lora), "--name", "sent", "--task", "sentiment", "--tag", "prod",
                     "--description", "positive or negative")
    assert first["version"] == 1 and sorted(first["tags"]) == ["latest", "prod"]
    assert first["digest"].startswith("sha256:") and first["adapter_type"] == "lora"
    assert {f["path"] for f in first["files"]} >= {"adapter_config.json", "adapter_model.safetensors"}
    second = run_json("push", str(make_lora("l2", seed=1)), "--name", "sent", "--task", "sentiment")
    assert second["version"] == 2 and second["digest"] != first["digest"]
    run("push", str(soft), "--name", "style", "--task", "style")

    listed = run_json("list")
    assert [(v["name"], v["version"]) for v in listed] == [("sent", 1), ("sent", 2), ("style", 1)]
    assert [v["name"] for v in run_json("list", "--type", "prompt_tuning")] == ["style"]
    assert [v["version"] for v in run_json("list", "--task", "sentiment")] == [1, 2]
    fingerprint = first["base"]["fingerprint"].removeprefix("sha256:")[:12]
    assert len(run_json("list", "--base", fingerprint)) == 3
    assert run_json("list", "--base", "some-other-base") == []

    table = run("list").output.splitlines()
    assert table[0].split()[:5] == ["NAME", "VER", "TAGS", "TYPE", "TASK"]
    assert any(line.startswith("style") and "prompt_tuning" in line for line in table)

    assert run_json("show", "sent:prod")["version"] == 1
    assert run_json("show", "sent")["version"] == 2
    assert run_json("show", f"sent@{first['digest'][:13]}")["version"] == 1
    assert "r=4" in run("show", "sent@1").output and "sentiment" in run("show", "sent@1").output

    moved = run_json("tag", "sent@2", "prod")
    assert moved["version"] == 2 and "prod" in moved["tags"]
    assert run_json("show", "sent:prod")["version"] == 2

    assert run_json("rm", "sent@2")["removed"] == ["sent@2"]
    assert run_json("show", "sent")["version"] == 1  # latest falls back to the newest left
    assert run_json("verify")["orphans"]  # sent@2's weights are unreferenced now
    freed = run_json("gc")
    assert freed["removed_objects"] >= 1
    report = run_json("verify")
    assert report["ok"] and report["orphans"] == []

    assert run_json("rm", "style", "--all")["removed"] == ["style@1"]
    assert [v["name"] for v in run_json("list")] == ["sent"]


def test_identical_files_are_stored_once(make_lora, _private_registry):
    lora = make_lora()
    run("push", str(lora), "--name", "a", "--task", "t")
    run("push", str(lora), "--name", "b", "--task", "t")
    objects = [p for p in (_private_registry / "objects" / "sha256").rglob("*") if p.is_file()]
    assert len(objects) == len(run_json("show", "a")["files"])


def test_registry_option_beats_environment(make_lora, tmp_path, _private_registry):
    other = tmp_path / "other"
    run("push", str(make_lora()), "--name", "a", "--task", "t", "--registry", str(other))
    assert (other / "registry.json").is_file()
    assert not (_private_registry / "registry.json").exists()
    assert run_json("list", "--registry", str(other / "registry.json"))[0]["name"] == "a"


def test_tiny_base_is_deterministic_and_loads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = run_json("base", "build-tiny", str(tmp_path / "a"))
    b = run_json("base", "build-tiny", str(tmp_path / "b"))
    assert a["fingerprint"] == b["fingerprint"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 5_000_000
    text = "naïve café ✓"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    refused = CliRunner().invoke(cli, ["base", "build-tiny", str(tmp_path / "a")])
    assert refused.exit_code != 0 and "--force" in refused.output


def test_registry_help_states_the_default_this_install_uses(tmp_path, monkeypatch):
    """A pip install has no checkout registry: the help names the per-user folder the rule picks."""
    import adapterhub.location as location

    def help_text() -> str:  # without whitespace: click wraps lines, also at a path's hyphens
        return "".join(run("push", "--help").output.split())

    monkeypatch.delenv("ADAPTERHUB_REGISTRY")
    assert f"thissourcecheckout'sregistry{location.CHECKOUT}" in help_text()  # the tests run in one
    monkeypatch.setattr(location, "CHECKOUT", tmp_path / "site-packages")  # where a wheel puts hub/
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    text = help_text()
    assert f"theregistryofthisuser{tmp_path / 'data' / 'adapterhub'}" in text and "checkout" not in text
    assert location.default_location() == str(tmp_path / "data" / "adapterhub")
    monkeypatch.setenv("ADAPTERHUB_REGISTRY", "http://hub.example:8000")
    assert "$ADAPTERHUB_REGISTRY,nowhttp://hub.example:8000" in help_text()


def test_gc_removes_staging_a_dead_writer_left_and_keeps_a_live_writers(make_lora, _private_registry):
    from adapterhub.blobstore import STALE_STAGING_S
    from adapterhub.registry import LocalRegistry

    run("push", str(make_lora()), "--name", "a", "--task", "t")
    staging = LocalRegistry(_private_registry).store.root / "staging"
    dead, live = staging / "hf-commit-dead", staging / "hf-commit-live"
    for folder in (dead, live):
        (folder / "part").mkdir(parents=True)
        (folder / "part" / "upload").write_bytes(b"x" * 1000)
    old = time.time() - STALE_STAGING_S - 60
    for p in (dead, dead / "part", dead / "part" / "upload", live, live / "part"):
        os.utime(p, (old, old))  # live: only its file is still being written

    assert run_json("verify")["temporaries"] == [str(dead)]
    freed = run_json("gc")
    assert freed["removed_temporaries"] == 1 and freed["freed_bytes"] >= 1000
    assert not dead.exists() and (live / "part" / "upload").read_bytes() == b"x" * 1000
    assert run_json("show", "a")["version"] == 1
    assert "temporary file(s) or folder(s)" in run("gc").output
