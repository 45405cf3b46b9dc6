"""The public Python API (``import adapterhub``): the documented example runs, each function does what
its command does against a real registry, and importing the package stays cheap."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import adapterhub
from adapterhub.errors import AdapterNotFound, InvalidName
from adapterhub.server import start_engine
from conftest import save_lora

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def test_import_loads_no_heavy_library():
    code = ("import sys, adapterhub; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'flask', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves():
    for name in adapterhub.__all__:
        assert getattr(adapterhub, name) is not None, name
    assert {"push", "pull", "MergeOptions", "EngineConfig", "HttpConfig"} <= set(dir(adapterhub))


def test_documented_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/python-api.md should hold exactly one runnable example"
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "support@1 ('latest', 'v1')"
    assert out[1].startswith("support@1 lora 4 sha256:")
    with_adapter, bare = out[-2], out[-1]
    assert with_adapter != bare


def test_push_list_show_pull_through_a_path_an_object_and_the_default(make_lora, tmp_path, _private_registry):
    folder = make_lora("a")
    v1 = adapterhub.push(folder, name="a", task="t", tags=["prod"], metrics={"acc": 0.5},
                         registry=str(tmp_path / "reg"))
    registry = adapterhub.open_registry(tmp_path / "reg")
    assert isinstance(registry, adapterhub.LocalRegistry)
    assert adapterhub.show("a:prod", registry=registry) == v1
    assert v1.metrics == {"acc": 0.5} and set(v1.tags) == {"latest", "prod"}
    assert [v.ref for v in adapterhub.list_adapters(task="t", registry=registry)] == ["a@1"]
    assert adapterhub.list_adapters(task="other", registry=registry) == []

    pulled = adapterhub.pull("a@1", tmp_path / "out", registry=registry)
    assert pulled == v1
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == \
        (folder / "adapter_model.safetensors").read_bytes()

    default = adapterhub.push(folder, name="b", task="t")  # $ADAPTERHUB_REGISTRY (the test's own)
    assert adapterhub.open_registry().location == str(_private_registry)
    assert adapterhub.show("b") == default


def test_errors_are_the_registry_s_own(make_lora, tmp_path):
    with pytest.raises(AdapterNotFound):
        adapterhub.show("nobody", registry=tmp_path / "reg")
    with pytest.raises(InvalidName):
        adapterhub.push(make_lora(), name="../escape", task="t", registry=tmp_path / "reg")
    assert isinstance(AdapterNotFound("x"), adapterhub.AdapterHubError)


def test_merge_model_and_merge_adapter(tiny_base, make_lora, tmp_path):
    registry = adapterhub.open_registry(tmp_path / "reg")
    adapterhub.push(make_lora("x"), name="x", task="tone", registry=registry)
    adapterhub.push(make_lora("y", seed=1), name="y", task="tone", registry=registry)

    model = adapterhub.merge_model(["x", str(tmp_path / "y")], tiny_base, tmp_path / "merged",
                                   adapterhub.MergeOptions(weights=(0.5, 0.5)), registry=registry)
    assert model.out == str(tmp_path / "merged") and model.edited_tensors > 0
    assert [a["ref"] for a in model.adapters] == ["x@1", str(tmp_path / "y")]
    assert (tmp_path / "merged" / "config.json").is_file()

    combined = adapterhub.merge_adapter(["x", "y"], tiny_base, name="xy", rank=8, registry=registry)
    version = adapterhub.show(combined.registry_ref, registry=registry)
    assert version.ref == "xy@1" and version.task == "tone"
    assert [item["ref"] for item in version.lineage] == ["x@1", "y@1"] and version.peft["r"] == 8


def test_train_adapter_pushes_with_its_metrics(tiny_base, tmp_path):
    from adapterhub.datasets.demo import make_rows

    rows, _ = make_rows("uppercase")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    config = adapterhub.TrainConfig(target_modules=("q_proj",), r=2, max_steps=2, batch_size=4)
    run = adapterhub.train_adapter(tiny_base, data, config, name="upper", task="uppercase", output=tmp_path / "run",
                                   push=True, registry=tmp_path / "reg", threads=1)
    assert run.result.adapter_dir == tmp_path / "run" / "adapter"
    assert run.pushed.ref == "upper@1" and run.pushed.metrics["train_steps"] == 2
    assert adapterhub.show("upper", registry=tmp_path / "reg").training["config"]["r"] == 2


def test_engine_generates_as_peft_does_and_serves_http(tiny_base, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_lora(tiny_base, tmp_path / "lora")
    registry = adapterhub.open_registry(tmp_path / "reg")
    adapterhub.push(folder, name="tenant", task="t", registry=registry)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), folder).eval()
    ids = torch.tensor([tokenizer.encode("hello")])
    with torch.no_grad():
        expected = peft_model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    expected_text = tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)

    with start_engine(tiny_base, registry=registry, quantize="none", device="cpu", preload=["tenant"],
                      http=True) as engine:
        assert engine.generate("hello", adapter="tenant", max_tokens=6) == expected_text
        chat = engine.generate([{"role": "user", "content": "hello"}], adapter="tenant", max_tokens=4)
        assert isinstance(chat, str)
        with urllib.request.urlopen(engine.url + "/health", timeout=30) as resp:
            health = json.load(resp)
        assert health["base"] == engine.base == str(tiny_base)
        assert [a["ref"] for a in health["loaded_adapters"]] == ["tenant@1"]
        with pytest.raises(AdapterNotFound):
            engine.generate("hello", adapter="nobody")
    with pytest.raises(RuntimeError):
        engine.generate("hello")


def test_a_bad_preload_leaves_nothing_running(tiny_base, tmp_path):
    import threading

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(AdapterNotFound):
        start_engine(tiny_base, registry=tmp_path / "reg", quantize="none", device="cpu",
                                preload=["nobody"])
    assert {t.name for t in threading.enumerate()} - before == set()
