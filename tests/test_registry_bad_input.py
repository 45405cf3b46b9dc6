"""Bad input gets one clear line, a non-zero exit, and leaves the registry exactly as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from conftest import snapshot
from adapterhub.registry import LocalRegistry


@pytest.fixture
def seeded(make_lora, _private_registry):
    """A registry holding one adapter, so 'unchanged' is checked against real content."""
    LocalRegistry(_private_registry).push(make_lora("seed"), name="seed", task="t")
    return _private_registry


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_refused(result, fragment: str):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    err = result.stderr if hasattr(result, "stderr") else result.output
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_folder_without_config(seeded, make_lora, tmp_path):
    bad = _copy(make_lora(), tmp_path / "noconf")
    (bad / "adapter_config.json").unlink()
    before = snapshot(seeded)
    assert_refused(run("push", str(bad), "--name", "x", "--task", "t"), "no adapter_config.json")
    assert snapshot(seeded) == before


def test_unparseable_config(seeded, make_lora, tmp_path):
    bad = _copy(make_lora(), tmp_path / "badjson")
    (bad / "adapter_config.json").write_text("{not json")
    before = snapshot(seeded)
    assert_refused(run("push", str(bad), "--name", "x", "--task", "t"), "not valid JSON")
    assert snapshot(seeded) == before


def test_unknown_peft_type(seeded, make_lora, tmp_path):
    bad = _copy(make_lora(), tmp_path / "ia3")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["peft_type"] = "IA3"
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    before = snapshot(seeded)
    assert_refused(run("push", str(bad), "--name", "x", "--task", "t"), "peft_type 'IA3' is not supported")
    assert snapshot(seeded) == before


def test_pickle_only_adapter_is_never_unpickled(seeded, make_lora, tmp_path):
    bad = _copy(make_lora(), tmp_path / "pickle")
    (bad / "adapter_model.safetensors").unlink()
    # A pickle that would create a file if it were ever loaded unsafely.
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    payload = pickle.dumps(Evil())
    (bad / "adapter_model.bin").write_bytes(payload)
    before = snapshot(seeded)
    assert_refused(run("push", str(bad), "--name", "x", "--task", "t"), "adapter_model.bin (a pickle)")
    assert not marker.exists()
    assert snapshot(seeded) == before


def test_shapes_that_do_not_fit_the_base(seeded, tmp_path, tiny_base):
    from adapterhub.tinybase import TinyBaseSpec, build_tiny_base
    from tests.conftest import save_lora

    other_base = build_tiny_base(tmp_path / "wide", TinyBaseSpec(hidden_size=96, num_attention_heads=4))
    foreign = save_lora(other_base, tmp_path / "foreign")
    before = snapshot(seeded)
    result = run("push", str(foreign), "--name", "x", "--task", "t", "--base", str(tiny_base))
    assert_refused(result, "adapter implies shape")
    assert snapshot(seeded) == before


def test_truncated_safetensors(seeded, make_lora, tmp_path):
    bad = _copy(make_lora(), tmp_path / "trunc")
    w = bad / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    before = snapshot(seeded)
    assert_refused(run("push", str(bad), "--name", "x", "--task", "t"), "adapter_model.safetensors")
    assert snapshot(seeded) == before


@pytest.mark.parametrize("name", ["a/b/c", "/a", "a//b", "org/..", "..", "a..b", "../etc", "x\\y", "", "-lead", "a b"])
def test_names_that_could_escape(seeded, make_lora, name):
    src = make_lora()
    before = snapshot(seeded)
    assert_refused(run("push", str(src), "--name", name, "--task", "t"), "invalid adapter name")
    assert snapshot(seeded) == before


@pytest.mark.parametrize(
    "ref, fragment",
    [
        ("nope", "no adapter named 'nope'"),
        ("seed@7", "seed has no version 7"),
        ("seed:prod", "seed has no tag 'prod'"),
        ("seed@sha256:abcdef", "no version with digest"),
        ("seed@zz", "invalid reference"),
        ("../seed", "invalid reference"),
    ],
)
def test_references_that_do_not_exist(seeded, tmp_path, ref, fragment):
    before = snapshot(seeded)
    for args in (["show", ref], ["pull", ref, "-o", str(tmp_path / "out")], ["tag", ref, "prod"]):
        assert_refused(run(*args), fragment)
    assert not (tmp_path / "out").exists()
    assert snapshot(seeded) == before


def test_corrupted_object_is_caught_on_pull(seeded, tmp_path):
    reg = LocalRegistry(seeded)
    v = reg.resolve("seed")
    obj = reg.store.path(v.file("adapter_model.safetensors").sha256)
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0xFF
    obj.write_bytes(bytes(data))
    before = snapshot(seeded)
    out = tmp_path / "out"
    assert_refused(run("pull", "seed", "-o", str(out)), "is corrupted")
    assert not out.exists()
    assert snapshot(seeded) == before
    verify = run("verify")
    assert verify.exit_code == 1 and "corrupted" in verify.output


def test_pull_keeps_existing_different_files(seeded, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    assert_refused(run("pull", "seed", "-o", str(out)), "use --force")
    assert (out / "adapter_config.json").read_text() == "{}"
    assert run("pull", "seed", "-o", str(out), "--force").exit_code == 0
    assert run("pull", "seed", "-o", str(out)).exit_code == 0  # identical files: a re-pull is a no-op


def test_rm_of_a_bare_name_needs_all(seeded):
    before = snapshot(seeded)
    assert_refused(run("rm", "seed"), "--all")
    assert snapshot(seeded) == before


def test_unreadable_registry_index(tmp_path, make_lora):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "registry.json").write_text('{"schema_version": 99, "adapters": {}}')
    before = snapshot(root)
    assert_refused(run("list", "--registry", str(root)), "schema_version 99 is not supported")
    assert_refused(run("push", str(make_lora()), "--name", "x", "--task", "t", "--registry", str(root)), "schema_version")
    assert snapshot(root) == before
