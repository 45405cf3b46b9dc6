"""The oracle for serving tests: what PEFT itself generates for one adapter, one prompt, alone.

Greedy decoding with ``PeftModel.generate(do_sample=False)`` on the same base files and the same
quantization the server uses. For prompt tuning the oracle passes ``use_cache=False``: with
peft 0.21.2 and transformers 5.x, PEFT's cached generate looks for the cache under the old
``past_key_values`` name, misses it, and prepends the virtual tokens again at every decode step
(checked against PEFT's own uncached forward, which agrees with ``use_cache=False``).
"""

from __future__ import annotations

import functools
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import pytest

from conftest import save_lora, save_prompt_tuning

__all__ = ["peft_greedy", "peft_model", "push_serving_adapters", "start_serve_process", "held_engine", "ADAPTER_SPECS",
           "announce_body", "post_json", "openai_client"]

# name -> (kind, seed, extra config): two LoRAs of different ranks and targets, two soft prompts.
ADAPTER_SPECS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "lora-qv": ("lora", 11, {}),
    "lora-all": ("lora", 12, {"r": 8, "lora_alpha": 16, "target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}),
    "prompt-4": ("prompt", 13, {"num_virtual_tokens": 4}),
    "prompt-7": ("prompt", 14, {"num_virtual_tokens": 7}),
}


def push_serving_adapters(registry: Any, base: Path, workdir: Path) -> dict[str, Path]:
    """Save the ``ADAPTER_SPECS`` adapters with PEFT and push them; return name -> PEFT folder."""
    folders = {}
    for name, (kind, seed, extra) in ADAPTER_SPECS.items():
        out = workdir / name
        if kind == "lora":
            save_lora(base, out, seed=seed, **extra)
        else:
            save_prompt_tuning(base, out, seed=seed, **extra)
        registry.push(out, name=name, task="test", base=str(base))
        folders[name] = out
    return folders


def save_overflowing_lora(base, out, factor: float = 1e20):
    """A PEFT-saved LoRA on gate/up with ``lora_B`` scaled by ``factor``: finite weights whose MLP
    activations overflow float32, so the logits are NaN (in PEFT too)."""
    from safetensors.torch import load_file, save_file

    save_lora(base, out, seed=5, target_modules=["gate_proj", "up_proj"])
    weights = load_file(out / "adapter_model.safetensors")
    save_file({k: v * factor if "lora_B" in k else v for k, v in weights.items()}, out / "adapter_model.safetensors")
    return out


def start_test_engine(base: Path, workdir: Path) -> tuple[Any, Any, dict[str, Path]]:
    """A registry holding the ``ADAPTER_SPECS`` adapters and a started engine on ``base`` (fp32, CPU):
    returns (registry, engine, name -> PEFT folder); the caller stops the engine."""
    from adapterhub.registry import LocalRegistry
    from adapterhub.server.engine.engine import create_engine
    from adapterhub.server.engine.model_loader import load_base_model

    registry = LocalRegistry(workdir / "registry")
    folders = push_serving_adapters(registry, base, workdir / "adapters")
    loaded = load_base_model(str(base), quantize="none", device="cpu")
    engine = create_engine(loaded, registry, max_batch_size=8, max_loaded_adapters=4).start()
    return registry, engine, folders


@contextmanager
def held_engine(engine: Any, *, in_decode: bool = False) -> Iterator[None]:
    """Hold the engine thread inside a forward pass of an opener request until the block ends: its
    prefill (so that everything submitted in the block is admitted in one prefill), or with
    ``in_decode`` its first decode step (one row running, everything submitted in the block waiting)."""
    from adapterhub.server.engine.request import SamplingParams

    entered, release = threading.Event(), threading.Event()
    forwards = []
    skip = 1 if in_decode else 0  # the opener's prefill runs before its first decode step

    def hold(module, args):
        forwards.append(1)
        if len(forwards) > skip and not release.is_set():
            entered.set()
            release.wait(60)

    hook = engine.model.register_forward_pre_hook(hold)
    try:
        opener = engine.submit([65], SamplingParams(max_tokens=3 if in_decode else 1, temperature=0))
        assert entered.wait(30)
        yield
    finally:
        release.set()
        hook.remove()
    list(opener.stream)


def start_serve_process(args: Sequence[str], env: Mapping[str, str]) -> tuple[subprocess.Popen, str, list[str]]:
    """``adapterhub serve --port 0 ARGS`` as a user runs it, in its own process: returns the
    process, its URL once it listens, and its stderr lines (a thread keeps reading them, so a
    chatty server never blocks on a full pipe)."""
    proc = subprocess.Popen([sys.executable, "-m", "adapterhub.cli", "serve", "--port", "0", *args], env=dict(env),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        found = re.search(r" on (http://\S+): OpenAI API", line)
        if found:
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
            return proc, found.group(1), lines
    proc.kill()
    pytest.fail("server did not start:\n" + "".join(lines))


def openai_client(url: str, api_key: str = "unused") -> Any:
    """The real ``openai`` client on a server of ours (no retries: a refusal must show)."""
    from openai import OpenAI

    return OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key, max_retries=0)


def post_json(url: str, path: str, body: Any, timeout: float = 300) -> tuple[int, Any]:
    """POST ``body`` as JSON to a running server: (status, parsed answer), error statuses included."""
    request = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def announce_body(url: str, length: int, headers: bytes = b"", timeout: float = 30) -> tuple[bytes, bytes]:
    """POST /v1/completions announcing a ``length``-byte body and sending only its first bytes:
    the (head, body) of the answer, which a server must give without waiting for the rest."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                     b"Content-Length: %d\r\n\r\n{\"prompt\": \"xxxx" % (headers, length))
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


@functools.lru_cache(maxsize=16)
def _model(base: str, adapter: str | None, quantize: str, device: str) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": torch.float32, "device_map": {"": device}}
    if quantize in ("bf16", "int8") and device == "cpu":
        return peft_cpu_packed_model(base, adapter, quantize)
    if quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    elif quantize == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def peft_cpu_packed_model(base: str, adapter: str | None, mode: str) -> Any:
    """PEFT's model with every base linear layer swapped for the server's CPU layer of ``mode``
    (``bf16`` or ``int8``): the adapter's delta exactly as PEFT computes it, on top of the same
    quantized layers."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapterhub.server.engine.model_loader import pack_cpu_layers

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    pack_cpu_layers(model, mode, skip=lambda name: ".lora_" in name)
    return model.eval()


def peft_model(base: Path, adapter: Path | None) -> Any:
    """PEFT's model for ``adapter`` on ``base`` (fp32, CPU; the bare base for ``None``), loaded once."""
    return _model(str(base), None if adapter is None else str(adapter), "none", "cpu")


def peft_greedy(base: Path, adapter: Path | None, prompt_ids: list[int], max_new_tokens: int,
                quantize: str = "none", device: str = "cpu") -> list[int]:
    """The tokens PEFT generates greedily (stopping at EOS like the server)."""
    import torch

    model = _model(str(base), None if adapter is None else str(adapter), quantize, device)
    is_prompt = adapter is not None and model.peft_config["default"].peft_type == "PROMPT_TUNING"
    ids = torch.tensor([prompt_ids], device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=256, use_cache=not is_prompt)
    return out[0, len(prompt_ids):].tolist()
