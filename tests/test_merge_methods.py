"""Combination methods against ``peft.utils.merge_utils`` on dense deltas, and the streaming I/O."""

from __future__ import annotations

import json

import pytest
import torch
from peft.utils import merge_utils

from adapterhub.errors import MergeError
from adapterhub.merge.io import ShardedReader, ShardedWriter, TensorSpec
from adapterhub.merge.methods import METHODS, get_method
from adapterhub.peft_format import read_safetensors_header


def _deltas(n=3, shape=(48, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


WEIGHTS = [0.9, -0.4, 1.3]


def test_linear_is_the_exact_weighted_sum():
    d = _deltas()
    expected = sum(w * x for w, x in zip(WEIGHTS, d))
    assert torch.allclose(METHODS["linear"].combine(d, WEIGHTS), expected, atol=1e-6)
    assert torch.equal(METHODS["cat"].combine(d, WEIGHTS), METHODS["linear"].combine(d, WEIGHTS))


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_peft(density):
    d = _deltas()
    ours = METHODS["ties"].combine(d, WEIGHTS, density)
    theirs = merge_utils.ties(d, torch.tensor(WEIGHTS), density, "total")
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("name, peft_fn", [("dare_linear", merge_utils.dare_linear), ("dare_ties", merge_utils.dare_ties)])
def test_dare_matches_peft_with_the_same_random_stream(name, peft_fn):
    d = _deltas()
    ours = METHODS[name].combine(d, WEIGHTS, 0.3, torch.Generator().manual_seed(123))
    torch.manual_seed(123)  # PEFT draws from the global generator
    theirs = peft_fn(d, torch.tensor(WEIGHTS), 0.3)
    assert torch.allclose(ours, theirs, atol=1e-6)
    kept = (METHODS[name].combine(d[:1], [1.0], 0.3, torch.Generator().manual_seed(1)) != 0).float().mean().item()
    assert 0.2 < kept < 0.4


def test_unknown_method():
    with pytest.raises(MergeError, match="known: linear, cat, ties, dare_linear, dare_ties"):
        get_method("slerp")


def _write(folder, specs, tensors, budget):
    folder.mkdir(exist_ok=True)
    with ShardedWriter(folder, specs, budget) as w:
        for s in specs:
            w.write_tensor(s.name, tensors[s.name].numpy())
    (folder / "config.json").write_text("{}")
    return w.file_names


def test_writer_shards_by_budget_and_reader_round_trips(tmp_path, monkeypatch):
    import adapterhub.merge.io as io

    tensors = {f"t{i}": torch.randn(100, 10 + i) for i in range(6)}
    tensors["ids"] = torch.arange(7)
    specs = [TensorSpec(n, "I64" if t.dtype == torch.int64 else "F32", tuple(t.shape)) for n, t in tensors.items()]
    names = _write(tmp_path / "m", specs, tensors, budget=10_000)
    assert names[0] == "model-00001-of-00004.safetensors"  # 4000+4400 | 4800+5200 | 5600 | 6000+56 bytes
    for n in names:
        assert sum(i.offsets[1] - i.offsets[0] for i in read_safetensors_header(tmp_path / "m" / n).values()) <= 10_000
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    from safetensors.torch import load_file  # the reference reader accepts our files

    assert torch.equal(load_file(tmp_path / "m" / names[1])["t3"], tensors["t3"])
    monkeypatch.setattr(io, "_CHUNK_BYTES", 1000)  # many chunks per tensor
    reader = ShardedReader(tmp_path / "m")
    with reader:
        for n, t in tensors.items():
            assert torch.equal(torch.from_numpy(reader.get(n)), t)
        halves = b"".join(bytes(c) for c in reader.iter_chunks("t5", "BF16"))
    assert torch.equal(torch.frombuffer(bytearray(halves), dtype=torch.bfloat16).view(100, 15),
                       tensors["t5"].to(torch.bfloat16))


def test_single_shard_has_no_index_and_order_is_enforced(tmp_path):
    specs = [TensorSpec("a", "F32", (2, 2)), TensorSpec("b", "F32", (3,))]
    names = _write(tmp_path / "m", specs, {"a": torch.ones(2, 2), "b": torch.zeros(3)}, budget=10**9)
    assert names == ["model.safetensors"] and not (tmp_path / "m" / "model.safetensors.index.json").exists()
    assert read_safetensors_header(tmp_path / "m" / "model.safetensors")["b"].shape == (3,)
    (tmp_path / "n").mkdir()
    with pytest.raises(MergeError, match="planned"):
        with ShardedWriter(tmp_path / "n", specs, 10**9) as w:
            w.write_tensor("b", torch.zeros(3).numpy())
    with pytest.raises(MergeError, match="never written"):
        with ShardedWriter(tmp_path / "n", specs, 10**9) as w:
            w.write_tensor("a", torch.ones(2, 2).numpy())
