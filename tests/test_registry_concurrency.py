"""Concurrent writers and writers killed mid-push never corrupt or lose anything."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from adapterhub.registry import LocalRegistry

ADAPTERHUB = [sys.executable, "-m", "adapterhub.cli"]


def big_lora(folder: Path, megabytes: int, seed: int) -> Path:
    """A valid LoRA folder of about ``megabytes`` MB for a base that is not inspectable offline."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    r, dim = 16, 4096
    n_layers = max(1, megabytes * 1024 * 1024 // (2 * r * dim * 4))
    tensors = {}
    for i in range(n_layers):
        prefix = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, dim, generator=g)
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(dim, r, generator=g)
    save_file(tensors, folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 32,
              "target_modules": ["q_proj"], "base_model_name_or_path": "example-org/not-on-this-machine"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def push_cmd(folder: Path, registry: Path, note: str) -> list[str]:
    return ADAPTERHUB + ["push", str(folder), "--name", "shared", "--task", "t", "--description", note,
                         "--registry", str(registry)]


def test_eight_concurrent_pushes_all_land(tmp_path):
    registry = tmp_path / "reg"
    folders = [big_lora(tmp_path / f"a{i}", 2, seed=i) for i in range(8)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen(push_cmd(f, registry, f"writer-{i}"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i, f in enumerate(folders)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    reg = LocalRegistry(registry)
    versions = reg.list(name="shared")
    assert [v.version for v in versions] == list(range(1, 9))
    assert sorted(v.description for v in versions) == sorted(f"writer-{i}" for i in range(8))
    assert reg.verify().ok and not reg.verify().orphans
    assert reg.resolve("shared").version == 8


def test_push_killed_at_any_point_leaves_a_consistent_registry(tmp_path):
    registry = tmp_path / "reg"
    folders = [big_lora(tmp_path / f"big{i}", 12, seed=i) for i in range(17)]  # new bytes every push
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # How long an uninterrupted push takes here, start-up included: the window the kills sample.
    t0 = time.monotonic()
    subprocess.run(push_cmd(folders[16], registry, "warm-up"), env=env, check=True, capture_output=True)
    window = time.monotonic() - t0
    rng = random.Random(1234)
    completed = {"warm-up"}
    killed_mid_way = 0
    for trial in range(16):
        note = f"trial-{trial}"
        p = subprocess.Popen(push_cmd(folders[trial], registry, note), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, window * 1.1))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed_mid_way += 1
        p.wait()
        if p.returncode == 0:
            completed.add(note)
        reg = LocalRegistry(registry)
        report = reg.verify()
        assert report.ok, report.problems
        listed = [v.description for v in reg.list(name="shared")]
        # every push that returned is listed; anything else listed committed before the kill
        assert completed <= set(listed)
        assert len(listed) == len(set(listed))
        assert [v.version for v in reg.list(name="shared")] == list(range(1, len(listed) + 1))
        completed = set(listed)
        # a pulled version is complete and intact
        reg.pull("shared", tmp_path / f"out{trial}")
    assert killed_mid_way >= 4, "the kills should land inside pushes"
    reg = LocalRegistry(registry)
    reg.gc()
    after = reg.verify()
    assert after.ok and not after.orphans and not after.temporaries
    assert len(reg.list(name="shared")) == len(completed)
