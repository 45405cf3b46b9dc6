"""Ctrl-C and kill -9 during ``adapterhub train`` leave a checkpoint that ``--resume`` continues from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterhub.datasets.demo import make_rows
from adapterhub.train.checkpoint import last_checkpoint


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def train_file(tmp_path):
    return _jsonl(tmp_path / "train.jsonl", make_rows("uppercase")[0][:32])


def _args(tiny_base, train_file, out, max_steps, save_steps):
    return [sys.executable, "-m", "adapterhub.cli", "train", "--base", str(tiny_base), "--data", str(train_file),
            "--name", "up", "--task", "uppercase", "--output", str(out), "--max-steps", str(max_steps),
            "--save-steps", str(save_steps), "--batch-size", "4", "--lr", "1e-3", "--threads", "1", "--json"]


def _start(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parent.parent)


def _wait_for(predicate, proc, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.communicate()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out waiting for the trainer")


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def _resume(tiny_base, train_file, out, max_steps):
    done = subprocess.run(_args(tiny_base, train_file, out, max_steps, 1000) + ["--resume"], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sigint_saves_a_checkpoint_and_resume_finishes(tiny_base, train_file, tmp_path):
    out = tmp_path / "run"
    proc = _start(_args(tiny_base, train_file, out, 100_000, 100_000))
    # The progress bar on stderr shows steps once training runs; wait for a few, then Ctrl-C.
    _wait_for(lambda: (out / "train_config.json").exists(), proc)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "--resume" in stderr and "Traceback" not in stderr
    checkpoint = last_checkpoint(out)
    assert checkpoint is not None and _step(checkpoint) >= 1
    stopped = _step(checkpoint)

    doc = _resume(tiny_base, train_file, out, stopped + 3)
    assert doc["metrics"]["train_steps"] == stopped + 3
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_sigkill_loses_at_most_save_steps_and_resume_matches_an_uninterrupted_run(tiny_base, train_file, tmp_path):
    out, total = tmp_path / "killed", 80
    proc = _start(_args(tiny_base, train_file, out, total, 2))
    _wait_for(lambda: last_checkpoint(out) is not None and _step(last_checkpoint(out)) >= 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    checkpoint = last_checkpoint(out)
    assert checkpoint is not None and _step(checkpoint) % 2 == 0 and _step(checkpoint) < total
    resumed = _resume(tiny_base, train_file, out, total)
    assert resumed["metrics"]["train_steps"] == total

    # The same run without interruption: the optimiser, schedule and data order were restored, so
    # the weights agree (up to float summation order).
    from safetensors.torch import load_file

    straight = subprocess.run(_args(tiny_base, train_file, tmp_path / "straight", total, 1000), capture_output=True,
                              text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert straight.returncode == 0, straight.stderr
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k


def test_resume_refuses_changed_settings_and_missing_runs(tiny_base, train_file, tmp_path):
    from adapterhub.errors import TrainingConfigError
    from adapterhub.train.checkpoint import prepare_output, run_record
    from adapterhub.train.config import TrainConfig

    out = tmp_path / "run"
    with pytest.raises(TrainingConfigError, match="nothing to resume"):
        prepare_output(out, run_record(TrainConfig(), "b", "sha256:x"), resume=True)
    prepare_output(out, run_record(TrainConfig(), "b", "sha256:x"), resume=False)
    with pytest.raises(TrainingConfigError, match=r"settings differ .*\(lr\)"):
        prepare_output(out, run_record(TrainConfig(lr=1.0), "b", "sha256:x"), resume=True)
    with pytest.raises(TrainingConfigError, match=r"data_sha256"):
        prepare_output(out, run_record(TrainConfig(), "b", "sha256:y"), resume=True)
    assert prepare_output(out, run_record(TrainConfig(max_steps=9), "b", "sha256:x"), resume=True) is None
