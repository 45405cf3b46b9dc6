"""Serving adapters that live on a remote hub: pulled by digest on first use, then exact like local ones."""

from __future__ import annotations

import pytest

from adapterhub.remote import RemoteRegistry
from remote_helpers import start_hub
from adapterhub.server.engine.engine import create_engine
from adapterhub.server.engine.model_loader import load_base_model
from adapterhub.server.engine.request import SamplingParams
from serving_helpers import peft_greedy, push_serving_adapters


@pytest.fixture
def remote(tiny_base, tmp_path):
    hub = start_hub(tmp_path / "hub")
    folders = push_serving_adapters(hub.registry, tiny_base, tmp_path / "adapters")
    try:
        yield RemoteRegistry(hub.url, token=hub.read_token), folders
    finally:
        hub.handle.close()


def test_engine_serves_lora_and_soft_prompts_from_a_remote_hub(remote, tiny_base):
    registry, folders = remote
    loaded = load_base_model(str(tiny_base), quantize="none", device="cpu")
    with create_engine(loaded, registry, max_batch_size=4, max_loaded_adapters=2) as engine:
        cases = [("lora-all", "remote lora"), ("prompt-7", "remote prompt"), ("lora-qv", "q")]
        running = []
        for model, text in cases:
            ids = engine.tokenizer.encode(text)
            running.append((model, ids, engine.submit(ids, SamplingParams(max_tokens=8, temperature=0),
                                                      engine.resolve(model))))
        for model, ids, request in running:
            got = [e.token_id for e in request.stream if e.token_id is not None]
            assert got == peft_greedy(tiny_base, folders[model], ids, 8), model
