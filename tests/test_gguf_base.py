"""A ``.gguf`` file as a base, on the real SmolLM2-135M-Instruct (4-bit GGUF): its Hugging Face copy
answers like the model, holds exactly the weights transformers dequantizes, has the copy's
fingerprint, and every command that takes a base takes the file; bad files fail in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
from click.testing import CliRunner

from adapterhub.base_model import load_base_info
from adapterhub.cli.main import cli
from adapterhub.errors import IncompatibleBase
from adapterhub.gguf_base import gguf_hf_folder
from adapterhub.location import open_registry
from conftest import save_lora, snapshot
from serving_helpers import start_serve_process

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def hf_copy(smollm2_base):
    """The HF copy loaded by plain transformers, once for the tests that only read it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(smollm2_base).eval(), AutoTokenizer.from_pretrained(smollm2_base)


def test_hf_copy_answers_like_the_instruct_model(hf_copy):
    import torch

    model, tokenizer = hf_copy
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    assert model.dtype == torch.float32 and model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_hf_copy_holds_exactly_the_weights_transformers_dequantizes(smollm2_gguf, hf_copy):
    import torch
    from transformers import AutoModelForCausalLM

    direct = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                  dtype=torch.float32).state_dict()
    copy = hf_copy[0].state_dict()
    assert direct.keys() == copy.keys()
    assert all(torch.equal(direct[k], copy[k]) for k in direct)


def test_gguf_path_and_hf_copy_give_identical_logits(smollm2_gguf, smollm2_base):
    import torch

    from adapterhub.server.engine.model_loader import load_base_model

    ids = None
    logits = []
    for base in (str(smollm2_gguf), str(smollm2_base)):
        loaded = load_base_model(base, quantize="none", device="cpu")
        assert loaded.name == base
        if ids is None:
            ids = loaded.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                                       return_dict=True)["input_ids"]
        with torch.inference_mode():
            logits.append(loaded.model(input_ids=ids).logits)
        del loaded
    assert torch.equal(logits[0], logits[1])


def test_gguf_file_and_hf_copy_are_one_base(smollm2_gguf, smollm2_base, tiny_base, tmp_path, _private_registry):
    on_gguf, on_copy = load_base_info(str(smollm2_gguf)), load_base_info(str(smollm2_base))
    assert on_gguf.fingerprint == on_copy.fingerprint and on_gguf.name == str(smollm2_gguf)
    assert on_gguf.model_type == "llama" and on_gguf.hidden_size == 576

    registry = open_registry(str(_private_registry))
    lora = save_lora(smollm2_base, tmp_path / "lora")
    for pushed_on, name in ((smollm2_base, "made-on-copy"), (smollm2_gguf, "pushed-on-gguf")):
        registry.push(lora, name=name, task="t", base=str(pushed_on))
    assert {v.name for v in registry.list(base=on_gguf.fingerprint[:19])} == {"made-on-copy", "pushed-on-gguf"}
    before = snapshot(_private_registry)
    with pytest.raises(IncompatibleBase):  # the check really runs against the GGUF's shapes
        registry.push(save_lora(tiny_base, tmp_path / "tiny-lora"), name="tiny", task="t", base=str(smollm2_gguf))
    assert snapshot(_private_registry) == before


def test_a_copy_of_the_file_elsewhere_is_the_same_cached_base(smollm2_gguf, smollm2_base, tmp_path):
    moved = tmp_path / "renamed.gguf"
    shutil.copyfile(smollm2_gguf, moved)  # another path, another mtime: same content, same cache entry
    assert gguf_hf_folder(moved) == smollm2_base
    memo = json.loads(next(p for p in (smollm2_base.parent / "keys").iterdir()
                           if json.loads(p.read_text())["path"] == str(moved)).read_text())
    assert memo == {"path": str(moved), "size": moved.stat().st_size, "mtime_ns": moved.stat().st_mtime_ns,
                    "key": smollm2_base.name}


def test_base_import_writes_a_loadable_folder(smollm2_gguf, smollm2_base, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    out = tmp_path / "smollm2"
    result = CliRunner().invoke(cli, ["base", "import", str(smollm2_gguf), str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["path"] == str(out) and doc["fingerprint"] == load_base_info(str(smollm2_base)).fingerprint
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in smollm2_base.iterdir())
    assert AutoConfig.from_pretrained(out).model_type == "llama"
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(out).chat_template
    again = CliRunner().invoke(cli, ["base", "import", str(smollm2_gguf), str(out)])
    assert again.exit_code == 1 and "--force" in again.output


def test_merge_folds_into_the_gguf_file_as_into_its_hf_copy(smollm2_gguf, smollm2_base, tmp_path):
    lora = save_lora(smollm2_base, tmp_path / "lora")
    merged = {}
    for label, base in (("gguf", smollm2_gguf), ("copy", smollm2_base)):
        merged[label] = tmp_path / f"merged-{label}"
        result = CliRunner().invoke(cli, ["merge", str(lora), "--base", str(base), "--out", str(merged[label])])
        assert result.exit_code == 0, result.output
    weights = [(merged[label] / "model.safetensors").read_bytes() for label in ("gguf", "copy")]
    assert weights[0] == weights[1]


def test_racing_builders_of_a_cache_entry_keep_the_first_copy(tmp_path):
    from adapterhub.atomic_file import staged_folder

    entry = tmp_path / "entry"
    with staged_folder(entry, keep_existing=True) as slow:
        (slow / "config.json").write_text("slow")
        with staged_folder(entry, keep_existing=True) as fast:
            (fast / "config.json").write_text("fast")
    assert (entry / "config.json").read_text() == "fast"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def _unknown_architecture(path):
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "frobnicator")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _truncated(size):
    def write(path, real):
        with open(real, "rb") as f:
            path.write_bytes(f.read(size))
    return write


BAD_FILES = {
    "missing": (lambda path, real: None, "no such file"),
    "not-gguf": (lambda path, real: path.write_text("{\"model_type\": \"llama\"}\n" * 100), "not a GGUF file"),
    "truncated-header": (_truncated(200), "truncated or corrupt GGUF file"),
    "truncated-weights": (_truncated(30_000_000), "truncated or corrupt GGUF file"),
    "unknown-architecture": (lambda path, real: _unknown_architecture(path),
                             "architecture frobnicator is not supported"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_gguf_fails_in_one_line_and_leaves_nothing(case, smollm2_gguf, tmp_path, monkeypatch):
    make, message = BAD_FILES[case]
    bad = tmp_path / f"{case}.gguf"
    make(bad, smollm2_gguf)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["base", "import", str(bad), str(out)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
    assert not out.exists()
    cache = tmp_path / "cache" / "adapterhub" / "gguf"
    assert not cache.exists() or not any(cache.iterdir())


def test_push_refuses_a_bad_gguf_base_in_one_line(smollm2_base, tmp_path, _private_registry):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    lora = save_lora(smollm2_base, tmp_path / "lora")
    result = CliRunner().invoke(cli, ["push", str(lora), "--name", "x", "--task", "t", "--base", str(bad)])
    assert result.exit_code == 2 and result.output.strip() == f"Error: base {bad}: not a GGUF file (it does not " \
        "start with the GGUF magic bytes)"
    assert not _private_registry.exists() or not open_registry(str(_private_registry)).list()


def _answers(url, models, prompt):
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused")
    out = {}
    for model in models:
        done = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, logprobs=1)
        choice = done.choices[0]
        out[model] = (choice.text, choice.logprobs.tokens, choice.logprobs.token_logprobs)
    return out


def test_serve_on_the_gguf_file_answers_as_on_its_hf_copy(smollm2_gguf, smollm2_base, tmp_path, _private_registry):
    from transformers import AutoTokenizer

    registry = open_registry(str(_private_registry))
    registry.push(save_lora(smollm2_base, tmp_path / "lora"), name="tenant", task="t",
                  base=str(smollm2_base))
    prompt = AutoTokenizer.from_pretrained(smollm2_base).apply_chat_template(QUESTION, add_generation_prompt=True,
                                                                             tokenize=False)
    servers = [start_serve_process(["--base", str(base), "--quantize", "none"], os.environ)
               for base in (smollm2_gguf, smollm2_base)]
    try:
        answers = [_answers(url, (str(base), "tenant"), prompt)
                   for (_, url, _), base in zip(servers, (smollm2_gguf, smollm2_base))]
    finally:
        for proc, _, _ in servers:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    on_gguf, on_copy = answers
    assert on_gguf[str(smollm2_gguf)] == on_copy[str(smollm2_base)]
    assert "Paris" in on_gguf[str(smollm2_gguf)][0]
    assert on_gguf["tenant"] == on_copy["tenant"] != on_gguf[str(smollm2_gguf)]
    assert all(proc.returncode == 0 for proc, _, _ in servers)
