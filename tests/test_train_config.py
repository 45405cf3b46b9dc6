"""``adapterhub train --config FILE.yaml`` with TRL/PEFT names, ``--packing``, ``--eval-steps``, ``--report-to``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.datasets.demo import make_rows
from adapterhub.registry import LocalRegistry


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_yaml_config_sets_every_flag_with_trl_names_and_flags_win(tiny_base, tmp_path, _private_registry):
    train, held_out = make_rows("uppercase")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"base: {tiny_base}\n"
        f"data: {_jsonl(tmp_path / 'train.jsonl', train[:24])}\n"
        f"eval_data: {_jsonl(tmp_path / 'eval.jsonl', held_out[:4])}\n"
        "name: upper-yaml\ntask: uppercase\n"
        f"output_dir: {tmp_path / 'run'}\n"
        "learning_rate: 0.001\nlora_r: 4\nlora_alpha: 8\ntarget_modules: [q_proj, v_proj]\n"
        "per_device_train_batch_size: 4\nmax_steps: 4\nmax_length: 96\npacking: true\n"
        "eval_steps: 2\nreport_to: tensorboard\nthreads: 1\npush: true\nno_progress: true\n"
    )
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--max-steps", "6", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    settings = doc["training"]["config"]
    assert (settings["lr"], settings["r"], settings["alpha"], settings["batch_size"]) == (0.001, 4, 8.0, 4)
    assert settings["max_steps"] == 6 and settings["packing"] is True and settings["target_modules"] == ["q_proj",
                                                                                                         "v_proj"]
    assert doc["metrics"]["train_steps"] == 6
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert [h["step"] for h in state["log_history"] if "eval_loss" in h] == [2, 4, 6]
    assert list((tmp_path / "run" / "checkpoints" / "runs").rglob("events.out.tfevents.*"))
    assert LocalRegistry(_private_registry).resolve("upper-yaml").training["config"]["packing"] is True


@pytest.mark.parametrize("text, message", [
    ("lr: 0.1\nbogus_setting: 1\n", "unknown setting 'bogus_setting'"),
    ("- a\n- b\n", "must be a mapping of settings, not list"),
    ("lr: [unclosed\n", "not valid YAML"),
])
def test_a_bad_config_is_one_line(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = CliRunner().invoke(cli, ["train", "--config", str(config)])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0


def test_packing_packs_rows_and_keeps_trl_labels(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    from adapterhub.train.config import TrainConfig
    from adapterhub.train.data import load_examples
    from adapterhub.train.sft import build_trainer
    from adapterhub.train.trainer import load_tokenizer

    examples = load_examples(_jsonl(tmp_path / "t.jsonl", make_rows("uppercase")[0][:12]))
    tokenizer = load_tokenizer(str(tiny_base))
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    plain = build_trainer(model, tokenizer, examples, tmp_path / "a", TrainConfig(max_length=512)).train_dataset
    packed = build_trainer(model, tokenizer, examples, tmp_path / "b",
                           TrainConfig(max_length=512, packing=True)).train_dataset
    assert len(packed) < len(plain) and all(len(r["input_ids"]) <= 512 for r in packed)
    learned = lambda ds: sorted(t for r in ds for t in r["labels"] if t != -100)  # noqa: E731
    assert learned(packed) == learned(plain)

    # A packed row is several rows side by side, each seeing only itself (as TRL's loss forward runs it).
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    row = max(packed, key=lambda r: len(r["seq_lengths"]))
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)([row])
    batch.pop("labels")
    with torch.no_grad():
        together = model(**batch, use_cache=False).logits[0]
        start = 0
        for n in row["seq_lengths"]:
            alone = model(input_ids=torch.tensor([row["input_ids"][start:start + n]])).logits[0]
            assert (together[start:start + n] - alone).abs().max() < 1e-4
            start += n
