"""``adapterhub merge`` as a user runs it: registry references, --verify, --json, one-line errors."""

from __future__ import annotations

import json

from click.testing import CliRunner
from merge_fixtures import max_diff, merged_logits, peft_logits

from adapterhub.cli.main import cli


def run(*args, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _push(folder, name):
    return json.loads(run("push", folder, "--name", name, "--task", "t", "--json").stdout)


def test_merge_registry_ref_with_verify(make_lora, tiny_base, tmp_path):
    lora = make_lora("a", target_modules=["q_proj", "v_proj", "gate_proj"])
    pushed = _push(lora, "sent")
    out = tmp_path / "model"
    doc = json.loads(run("merge", "sent@1", "--base", tiny_base, "--out", out, "--verify", "--json").stdout)
    assert doc["verify"]["passed"] and doc["verify"]["max_abs_diff"] <= 1e-4
    assert doc["adapters"] == [{"ref": "sent@1", "digest": pushed["digest"], "weight": 1.0}]
    assert pushed["digest"] in (out / "README.md").read_text()
    assert max_diff(merged_logits(out), peft_logits(tiny_base, [lora])) <= 1e-4
    text = run("merge", "sent", "--base", tiny_base, "--out", tmp_path / "again", "--verify").output
    assert "verified against PEFT" in text and "max |logits difference|" in text


def test_as_adapter_pushes_with_lineage(make_lora, tiny_base):
    _push(make_lora("a", seed=1), "one")
    _push(make_lora("b", seed=2, r=8), "two")
    run("merge", "one", "two", "--base", tiny_base, "--weights", "0.6,0.4", "--as-adapter", "--rank", "6",
        "--name", "blend")
    shown = json.loads(run("show", "blend", "--json").stdout)
    assert [(x["ref"], x["weight"]) for x in shown["lineage"]] == [("one@1", 0.6), ("two@1", 0.4)]
    assert shown["peft"]["r"] == 6 and shown["adapter_type"] == "lora"


def _fails(*args, message: str):
    result = run(*args, ok=False)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_errors_are_one_line_and_write_nothing(make_lora, make_prompt, tiny_base, tmp_path):
    a, b = make_lora("a"), make_lora("b", seed=1)
    out = tmp_path / "model"
    _fails("merge", a, b, "--base", tiny_base, "--out", out, "--method", "slerp", message="unknown merge method")
    _fails("merge", a, b, "--base", tiny_base, "--out", out, "--weights", "1", message="1 weights given for 2")
    _fails("merge", a, "--base", tmp_path / "nope", "--out", out, message="no such model folder")
    _fails("merge", make_prompt("p"), "--base", tiny_base, "--out", out, message="prompt-tuning adapter")
    _fails("merge", "ghost@1", "--base", tiny_base, "--out", out, message="ghost")
    _fails("merge", a, "--base", tiny_base, "--out", out, "--weights", "x,y", message="comma-separated numbers")
    _fails("merge", a, b, "--base", tiny_base, "--as-adapter", "--name", "c", message="needs --rank")
    assert not out.exists()
    assert run("merge", a, "--base", tiny_base, "--out", out, "--as-adapter", ok=False).exit_code != 0
