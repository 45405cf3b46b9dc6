"""The engine on the tiny base: exact against PEFT in mixed batches, continuous batching, adapters.

One engine (fp32) is shared by the module; every answer is compared token for token with what PEFT
generates for the same adapter and prompt alone (``serving_helpers.peft_greedy``).
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from adapterhub.errors import AdapterNotFound, IncompatibleBase
from adapterhub.registry import LocalRegistry
from adapterhub.tinybase import TinyBaseSpec, build_tiny_base
from adapterhub.server.engine.engine import ContextTooLong, create_engine
from adapterhub.server.engine.model_loader import load_base_model
from adapterhub.server.engine.detokenizer import StopText
from adapterhub.server.engine.request import SamplingParams
from serving_helpers import peft_greedy, push_serving_adapters, start_test_engine

GREEDY = dict(temperature=0)


@pytest.fixture(scope="module")
def served(tiny_base, tmp_path_factory):
    _, engine, folders = start_test_engine(tiny_base, tmp_path_factory.mktemp("engine"))
    yield engine, folders
    engine.stop()


def _run(engine, model, text, max_tokens, **params):
    ids = engine.tokenizer.encode(text)
    return ids, engine.submit(ids, SamplingParams(max_tokens=max_tokens, **params), engine.resolve(model))


def _tokens(request):
    events = list(request.stream)
    assert events[-1].finish_reason in ("stop", "length"), events[-1]
    return [e.token_id for e in events if e.token_id is not None], events[-1]


CASES = [  # (model, prompt, max_tokens): every adapter kind plus the base, prompts of different lengths
    (None, "Hello world", 20),
    ("lora-qv", "Hello world", 24),
    ("lora-all", "A longer prompt for the all-linear LoRA", 17),
    ("prompt-4", "The cat sat", 25),
    ("prompt-7", "Q", 12),
    ("lora-qv", "x", 9),
    (None, "Base rows share the batch too", 30),
    ("prompt-4", "xyz", 5),
]


def test_mixed_batch_is_token_for_token_peft(served, tiny_base):
    engine, folders = served
    running = [(m, *_run(engine, m, text, n, **GREEDY), n) for m, text, n in CASES]
    for model, ids, request, n in running:
        got, last = _tokens(request)
        want = peft_greedy(tiny_base, folders.get(model), ids, n)
        assert got == want, f"{model}: server {got} != PEFT {want}"
        assert last.prompt_tokens == len(ids) and last.completion_tokens == len(got)
    assert engine.stats.batch_sizes and max(engine.stats.batch_sizes) > 1


def test_short_requests_join_and_leave_a_running_batch(served, tiny_base):
    engine, folders = served
    ids, long_req = _run(engine, None, "a long answer", 200, **GREEDY)
    stream = iter(long_req.stream)
    first = next(stream)  # the long request is decoding now
    assert first.finish_reason is None
    short = [(m, *_run(engine, m, t, 6, **GREEDY)) for m, t in [("lora-all", "join"), ("prompt-7", "me")]]
    for model, sids, request in short:
        got, _ = _tokens(request)
        assert got == peft_greedy(tiny_base, folders[model], sids, 6)
        assert long_req.stream.finished_at is None, "a short request waited for the long one"
    rest = [first.token_id] + [e.token_id for e in stream if e.token_id is not None]
    assert rest == peft_greedy(tiny_base, None, ids, 200)


def test_stop_strings_and_length(served):
    engine, _ = served
    ids, request = _run(engine, None, "Hello world", 30, **GREEDY)
    full_tokens, _ = _tokens(request)
    text = engine.tokenizer.decode(full_tokens, skip_special_tokens=True)
    stop = text[5:8]
    _, request = _run(engine, None, "Hello world", 30, stop=(stop,), **GREEDY)
    events = list(request.stream)
    assert events[-1].finish_reason == "stop"
    assert "".join(e.text for e in events) == text[: text.find(stop)]
    _, request = _run(engine, None, "Hello world", 3, **GREEDY)
    assert list(request.stream)[-1].finish_reason == "length"


def test_stop_text_holds_back_a_partial_stop_string():
    class Bytes:  # decode ids as bytes, like the tiny byte-level tokenizer
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    st = StopText(Bytes(), ("END",))
    released = [st.add(b)[0] for b in b"abE"]
    assert released == ["a", "b", ""]  # "E" may start "END"
    assert st.add(ord("N")) == ("", False)
    assert st.add(ord("D")) == ("", True)
    st = StopText(Bytes(), ())
    assert [st.add(b)[0] for b in "é".encode()] == ["", "é"]  # no half character


def test_sampling_is_reproducible_by_seed(served):
    engine, _ = served
    params = dict(temperature=0.9, top_p=0.8, seed=1234)
    first = [_tokens(_run(engine, "lora-qv", "sample me", 12, **params)[1])[0] for _ in range(2)]
    # same seed, now sharing the batch with other rows
    others = [_run(engine, m, "noise", 10, temperature=1.0) for m in ("prompt-4", None)]
    again = _tokens(_run(engine, "lora-qv", "sample me", 12, **params)[1])[0]
    for _, r in others:
        _tokens(r)
    assert first[0] == first[1] == again
    other_seed = _tokens(_run(engine, "lora-qv", "sample me", 12, temperature=0.9, top_p=0.8, seed=99)[1])[0]
    assert other_seed != again


def test_bad_requests_are_refused_before_the_engine(served, tiny_base, tmp_path):
    engine, _ = served
    with pytest.raises(AdapterNotFound):
        engine.resolve("no-such-adapter")
    with pytest.raises(AdapterNotFound):
        engine.resolve("not a reference!")
    with pytest.raises(ContextTooLong):
        engine.submit([65] * 500, SamplingParams(max_tokens=20), None)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    # an adapter made for another base (different hidden size) is refused by fingerprint and shape
    other = build_tiny_base(tmp_path / "other-base", TinyBaseSpec(hidden_size=64, intermediate_size=128))
    from conftest import save_lora

    engine.registry.push(save_lora(other, tmp_path / "other-lora"), name="other-lora", task="t", base=str(other))
    with pytest.raises(IncompatibleBase):
        engine.resolve("other-lora")


def test_unload_frees_adapter_memory(served):
    engine, _ = served
    resolved = engine.resolve("prompt-7")
    engine.load_adapter(resolved)
    version = resolved.version
    prompt = engine.soft_prompts.acquire(version)
    tensor = weakref.ref(prompt.embeddings)
    engine.soft_prompts.release(prompt)
    del prompt
    assert engine.is_loaded(version.ref)
    assert engine.unload_adapter(version.ref)
    gc.collect()
    assert tensor() is None, "the soft prompt's tensor is still referenced after unload"
    assert not engine.is_loaded(version.ref)

    resolved = engine.resolve("lora-all")
    engine.load_adapter(resolved)
    lora = resolved.version
    slot = next(a["slot"] for a in engine.loaded_adapters() if a["ref"] == lora.ref)
    layer = next(iter(engine.lora_slots.bank.modules.values()))
    assert layer.lora_A[slot].abs().sum() > 0
    assert engine.unload_adapter(lora.ref)
    assert not engine.lora_slots.bank.occupied(slot)
    assert all(m.lora_A[slot].abs().sum() == 0 and m.lora_B[slot].abs().sum() == 0
               for m in engine.lora_slots.bank.modules.values())
    assert not engine.unload_adapter(lora.ref)


class _GatedRegistry(LocalRegistry):
    """A registry whose reads of one object wait for a gate: a slow adapter load, on demand."""

    gate: threading.Event
    slow_digest: str = ""

    def object_path(self, digest):
        if digest == self.slow_digest:
            self.gate.wait(60)
        return super().object_path(digest)


def test_a_slow_adapter_load_does_not_stall_other_requests(tiny_base, tmp_path):
    registry = _GatedRegistry(tmp_path / "reg")
    registry.gate = threading.Event()
    push_serving_adapters(registry, tiny_base, tmp_path / "adapters")
    slow = registry.resolve("prompt-4")
    registry.slow_digest = slow.file("adapter_model.safetensors").sha256
    loaded = load_base_model(str(tiny_base), quantize="none", device="cpu")
    with create_engine(loaded, registry, max_batch_size=4, max_loaded_adapters=2) as engine:
        engine.load_adapter(engine.resolve("lora-qv"))
        started = threading.Event()
        slow_result = {}

        def slow_client():
            started.set()
            slow_result["request"] = _run(engine, "prompt-4", "slow", 4, **GREEDY)[1]

        thread = threading.Thread(target=slow_client)
        thread.start()
        started.wait()
        time.sleep(0.2)
        for model in ("lora-qv", None):  # finish while the prompt-4 load is stuck
            got, last = _tokens(_run(engine, model, "fast", 8, **GREEDY)[1])
            assert len(got) == 8 or last.finish_reason == "stop"
        assert thread.is_alive() and "request" not in slow_result
        registry.gate.set()
        thread.join(30)
        assert _tokens(slow_result["request"])[1].finish_reason in ("stop", "length")


def test_adapter_cache_evicts_least_recently_used(tiny_base, tmp_path):
    registry = LocalRegistry(tmp_path / "reg")
    push_serving_adapters(registry, tiny_base, tmp_path / "adapters")
    loaded = load_base_model(str(tiny_base), quantize="none", device="cpu")
    with create_engine(loaded, registry, max_batch_size=4, max_loaded_adapters=1) as engine:
        for name in ("lora-qv", "lora-all", "lora-qv", "prompt-4", "prompt-7"):
            _tokens(_run(engine, name, "hi", 2, **GREEDY)[1])
        resident = {a["ref"] for a in engine.loaded_adapters()}
        assert resident == {"lora-qv@1", "prompt-7@1"}
        assert engine.lora_slots.stats.evictions == 2 and engine.lora_slots.stats.misses == 3
        assert engine.soft_prompts.stats.evictions == 1


def _quantized_engine_matches_peft(tiny_base, tmp_path, quantize: str, device: str) -> None:
    registry = LocalRegistry(tmp_path / "reg")
    folders = push_serving_adapters(registry, tiny_base, tmp_path / "adapters")
    loaded = load_base_model(str(tiny_base), quantize=quantize, device=device, dtype="float32")
    with create_engine(loaded, registry, max_batch_size=8, max_loaded_adapters=4) as engine:
        cases = [(None, "quantized base", 12), ("lora-all", "quantized lora", 12), ("prompt-7", "prompt", 12),
                 ("lora-qv", "q", 8)]
        running = [(m, *_run(engine, m, t, n, **GREEDY), n) for m, t, n in cases]
        for model, ids, request, n in running:
            got, _ = _tokens(request)
            assert got == peft_greedy(tiny_base, folders.get(model), ids, n, quantize=quantize, device=device), model


@pytest.mark.parametrize("quantize", ["nf4", "int8", "bf16"])
def test_quantized_base_mixed_batch_matches_peft_on_the_same_quantization(tiny_base, tmp_path, quantize):
    _quantized_engine_matches_peft(tiny_base, tmp_path, quantize, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("quantize", ["none", "nf4", "int8"])
def test_engine_on_cuda_matches_peft_on_the_same_quantization(tiny_base, tmp_path, quantize):
    """The whole engine (LoRA slots, soft prompts, base rows, continuous batching) on a CUDA base."""
    _quantized_engine_matches_peft(tiny_base, tmp_path, quantize, "cuda")


def test_a_failing_step_fails_only_its_requests_and_the_engine_keeps_serving(served):
    engine, _ = served

    def boom(module, args):
        raise RuntimeError("injected fault")

    hook = engine.model.register_forward_pre_hook(boom)
    try:
        events = list(_run(engine, "prompt-4", "doomed", 4, **GREEDY)[1].stream)
    finally:
        hook.remove()
    assert events[-1].finish_reason == "error" and "injected fault" in events[-1].error
    assert all(a["in_use"] == 0 for a in engine.loaded_adapters())  # its adapter was released
    got, last = _tokens(_run(engine, "prompt-4", "after", 3, **GREEDY)[1])
    assert len(got) == 3 or last.finish_reason == "stop"
