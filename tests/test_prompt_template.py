"""Prompt templates, the zero-parameter adapter: the format and its checks, how it renders, and its life in
the registry (push, tag, list, show, pull, verify, a remote hub) and in merge (refused, like soft prompts)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adapterhub.adapter_folder import read_adapter_folder
from adapterhub.cli.main import cli
from adapterhub.errors import IncompatibleBase, InvalidAdapter
from adapterhub.prompt_template import (
    MAX_EXAMPLES,
    PROMPT_TEMPLATE_FILE,
    FewShot,
    PromptTemplate,
    parse_prompt_template,
    write_prompt_template,
)
from adapterhub.registry import LocalRegistry
from conftest import snapshot

SENTIMENT = PromptTemplate(template="Review: {input}\nSentiment:", system="Label the review.",
                           examples=(FewShot("Great film.", " positive"), FewShot("Dull book.", " negative")))


def _doc(**fields):
    return {"format_version": 1, "template": "Q: {input}\nA:", **fields}


def test_render_and_messages_follow_the_documented_layout():
    assert SENTIMENT.render("A {lovely} meal.") == (
        "Label the review.\n\nReview: Great film.\nSentiment: positive\n\nReview: Dull book.\nSentiment: negative"
        "\n\nReview: A {lovely} meal.\nSentiment:")  # the input's braces are text, not fields
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Nice hotel."}]
    assert SENTIMENT.messages(chat) == [
        {"role": "system", "content": "Label the review.\n\nBe brief."},
        {"role": "user", "content": "Review: Great film.\nSentiment:"}, {"role": "assistant", "content": " positive"},
        {"role": "user", "content": "Review: Dull book.\nSentiment:"}, {"role": "assistant", "content": " negative"},
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Review: Nice hotel.\nSentiment:"}]
    bare = parse_prompt_template(_doc(template="{{literal}} {input}"))
    assert bare.render("x") == "{literal} x"
    assert bare.messages([{"role": "user", "content": "x"}]) == [{"role": "user", "content": "{literal} x"}]
    with pytest.raises(InvalidAdapter, match="has none"):
        bare.messages([{"role": "system", "content": "only a system turn"}])


@pytest.mark.parametrize("doc, message", [
    (_doc(template="{input} and {other}"), "only {input} may be a placeholder, found {other}"),
    (_doc(template="{input!r}"), "found {input!r}"),
    (_doc(template="{input.__class__}"), "found {input.__class__}"),
    (_doc(template="{input} }"), "write a literal brace twice"),
    (_doc(template="{input}{input}"), "exactly one {input} placeholder, found 2"),
    (_doc(template="no placeholder"), "exactly one {input} placeholder, found 0"),
    (_doc(template=3), "template must be a non-empty string"),
    (_doc(system=["x"]), "system must be a non-empty string or null"),
    (_doc(system="a\x00b"), "must not contain NUL"),
    (_doc(examples={"input": "a"}), "examples must be a list"),
    (_doc(examples=[{"input": "a", "output": "b", "note": "c"}]), "examples[0] must be an object with exactly"),
    (_doc(examples=[{"input": "a", "output": 1}]), "examples[0].output must be a non-empty string"),
    (_doc(examples=[{"input": "a", "output": "b"}] * (MAX_EXAMPLES + 1)), f"at most {MAX_EXAMPLES} pairs"),
    (_doc(system="x" * 40_000), "over 32768"),
    (_doc(prompt="typo"), "unknown field 'prompt'"),
    (_doc(format_version=2), "format_version must be 1, got 2"),
    (_doc(format_version=True), "format_version must be 1, got true"),
    (_doc(base_model_name_or_path="a\nb"), "one line"),
    ([1], "a JSON object"),
])
def test_invalid_templates_are_refused_with_one_line(doc, message):
    with pytest.raises(InvalidAdapter) as e:
        parse_prompt_template(doc)
    assert message in str(e.value) and "\n" not in str(e.value)


def _push(args, registry):
    return CliRunner().invoke(cli, ["push", *args, "--registry", str(registry)])


def test_push_tag_list_show_pull_verify(tiny_base, tmp_path):
    folder = write_prompt_template(SENTIMENT, tmp_path / "sentiment-template")
    registry = tmp_path / "registry"
    result = _push([str(folder), "--name", "senti-tpl", "--task", "sentiment", "--base", str(tiny_base),
                    "--tag", "v1", "--json"], registry)
    assert result.exit_code == 0, result.output
    pushed = json.loads(result.stdout)
    assert pushed["adapter_type"] == "prompt_template" and pushed["tags"] == ["latest", "v1"]
    assert pushed["peft"] == {"format_version": 1, "template": SENTIMENT.template, "examples": 2,
                              "system": "Label the review.", "chars": pushed["peft"]["chars"]}
    assert [f["path"] for f in pushed["files"]] == [PROMPT_TEMPLATE_FILE]
    reg = LocalRegistry(registry)
    assert pushed["base"]["name"] == str(tiny_base) and pushed["base"]["fingerprint"] and pushed["base"]["shapes"] == {}

    listed = CliRunner().invoke(cli, ["list", "--type", "prompt_template", "--registry", str(registry)])
    assert listed.exit_code == 0 and "senti-tpl" in listed.output and "examples=2" in listed.output
    shown = CliRunner().invoke(cli, ["show", "senti-tpl:v1", "--registry", str(registry)])
    assert shown.exit_code == 0 and "prompt_template" in shown.output and PROMPT_TEMPLATE_FILE in shown.output

    pulled = tmp_path / "pulled"
    pull = CliRunner().invoke(cli, ["pull", "senti-tpl@1", "-o", str(pulled), "--registry", str(registry)])
    assert pull.exit_code == 0, pull.output
    assert (pulled / PROMPT_TEMPLATE_FILE).read_bytes() == (folder / PROMPT_TEMPLATE_FILE).read_bytes()
    assert read_adapter_folder(pulled).config == SENTIMENT.to_dict()
    assert reg.verify().ok

    again = _push([str(folder), "--name", "senti-tpl", "--task", "sentiment", "--base", str(tiny_base)], registry)
    assert again.exit_code == 0 and reg.resolve("senti-tpl").version == 2
    assert reg.resolve("senti-tpl@2").digest == reg.resolve("senti-tpl@1").digest  # same content, same digest


def test_bad_template_folders_change_nothing(tiny_base, tmp_path, make_lora):
    registry = tmp_path / "registry"
    reg = LocalRegistry(registry)
    reg.push(write_prompt_template(SENTIMENT, tmp_path / "ok"), name="ok", task="t", base=str(tiny_base))
    before = snapshot(registry)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / PROMPT_TEMPLATE_FILE).write_text(json.dumps(_doc(template="{input} {x}")))
    unbased = write_prompt_template(PromptTemplate(template="{input}"), tmp_path / "unbased")
    both = make_lora("both")
    (both / PROMPT_TEMPLATE_FILE).write_text(json.dumps(_doc()))
    notjson = tmp_path / "notjson"
    notjson.mkdir()
    (notjson / PROMPT_TEMPLATE_FILE).write_text("{nope")
    for folder, message in ((bad, "only {input} may be a placeholder"),
                            (unbased, f"{PROMPT_TEMPLATE_FILE} names no base_model_name_or_path"),
                            (both, "holds both adapter_config.json and prompt_template.json"),
                            (notjson, "not valid JSON")):
        result = _push([str(folder), "--name", "x", "--task", "t"], registry)
        assert result.exit_code != 0 and message in result.output, result.output
        assert result.output.strip().count("\n") == 0, result.output
    assert snapshot(registry) == before


def test_base_named_in_the_file_and_remote_hub(tiny_base, tmp_path, hub):
    from adapterhub.remote import RemoteRegistry

    named = write_prompt_template(PromptTemplate(template="Say: {input}", base_model=str(tiny_base)), tmp_path / "t")
    remote = RemoteRegistry(hub.url, token=hub.write_token, progress=False)
    version = remote.push(named, name="say", task="echo")
    assert version.adapter_type == "prompt_template" and version.base["name"] == str(tiny_base)
    remote.pull("say", tmp_path / "back")
    assert (tmp_path / "back" / PROMPT_TEMPLATE_FILE).read_bytes() == (named / PROMPT_TEMPLATE_FILE).read_bytes()


def test_merge_refuses_a_prompt_template(tiny_base, tmp_path):
    folder = write_prompt_template(SENTIMENT, tmp_path / "tpl")
    LocalRegistry(tmp_path / "registry").push(folder, name="tpl", task="t", base=str(tiny_base))
    for ref in (str(folder), "tpl"):
        result = CliRunner().invoke(cli, ["merge", ref, "--base", str(tiny_base), "--out", str(tmp_path / "merged"),
                                          "--registry", str(tmp_path / "registry")])
        assert result.exit_code != 0, result.output
        assert "a prompt template rewrites the prompt text and has no parameters" in result.output
        assert result.output.strip().count("\n") == 0, result.output
    assert not (tmp_path / "merged").exists()


def test_serving_check_refuses_a_template_pushed_for_another_base(tiny_base, tmp_path):
    from adapterhub.base_model import load_base_info
    from adapterhub.server.engine.adapters.resolution import check_compatible
    from adapterhub.tinybase import TinyBaseSpec, build_tiny_base

    other = build_tiny_base(tmp_path / "other", TinyBaseSpec(hidden_size=64, intermediate_size=128))
    reg = LocalRegistry(tmp_path / "registry")
    version = reg.push(write_prompt_template(SENTIMENT, tmp_path / "tpl"), name="tpl", task="t", base=str(other))
    check_compatible(version, load_base_info(str(other)))
    with pytest.raises(IncompatibleBase, match="was registered for base"):
        check_compatible(version, load_base_info(str(tiny_base)))
