"""One bad request never hurts another: rows that fail end alone, the rest are exact; bounded queue; cancels.

The engine runs on the tiny base (fp32) with PEFT-made adapters, one of which overflows: a LoRA on
gate/up whose ``lora_B`` was scaled by 1e20 after PEFT saved it (its weights are finite, its
activations overflow, and PEFT itself answers NaN logits for it). Every surviving row is compared
token for token with what the same request gets alone on the same engine (and greedy rows also with
PEFT). To make sure the bad row shares one forward pass with the good ones, the engine thread is
held inside a forward pass (a real forward hook) while they queue, so they are admitted together.
"""

from __future__ import annotations

import gc
import json
import math
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch

from adapterhub.errors import InvalidAdapter
from adapterhub.registry import LocalRegistry
from adapterhub.server.engine.engine import QueueFull, create_engine
from adapterhub.server.engine.model_loader import load_base_model
from adapterhub.server.engine.request import (
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    ErrorCode,
    RowFailure,
    SamplingParams,
)
from adapterhub.server.engine.sampler import new_generator, sample
from conftest import save_lora
from serving_helpers import (
    held_engine,
    peft_greedy,
    push_serving_adapters,
    save_overflowing_lora,
    start_test_engine,
)


@dataclass(frozen=True)
class Case:
    model: str | None
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None

    def params(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)


GOOD = [  # the base, both LoRAs, both soft prompts, and a seeded sampled row
    Case(None, "Hello world", 14),
    Case("lora-qv", "Hello world", 12),
    Case("lora-all", "A prompt for every linear layer", 11),
    Case("prompt-4", "The cat sat", 13),
    Case("prompt-7", "Q", 9),
    Case("lora-qv", "sample me", 10, temperature=0.9, seed=2**64 - 1),
]


@pytest.fixture(scope="module")
def served(tiny_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("isolation")
    registry, engine, folders = start_test_engine(tiny_base, workdir)
    nan_folder = save_overflowing_lora(tiny_base, workdir / "lora-nan")
    registry.push(nan_folder, name="lora-nan", task="test", base=str(tiny_base))
    yield registry, engine, folders
    engine.stop()


@pytest.fixture(scope="module")
def alone(served) -> dict[Case, list[int]]:
    """What each good case answers when it is the only request on the engine."""
    _, engine, _ = served
    return {case: _tokens(_submit(engine, case)) for case in GOOD}


def _submit(engine, case: Case, params: SamplingParams | None = None):
    return engine.submit(engine.tokenizer.encode(case.prompt), params or case.params(), engine.resolve(case.model))


def _tokens(request) -> list[int]:
    events = list(request.stream)
    assert events[-1].finish_reason in ("stop", "length"), events[-1]
    return [e.token_id for e in events if e.token_id is not None]


def _run_batch_with(engine, bad: Case, bad_params: SamplingParams | None = None):
    before = dict(engine.stats.failed)
    with held_engine(engine):
        good = [_submit(engine, case) for case in GOOD]
        bad_request = _submit(engine, bad, bad_params)
    steps = engine.stats.batch_sizes.copy()
    return good, bad_request, before, steps


def _assert_only_bad_failed(engine, tiny_base, folders, alone, good, bad_request, code: ErrorCode, before):
    events = list(bad_request.stream)
    last = events[-1]
    assert last.finish_reason == "error" and last.error_code == code, last
    assert last.error and "\n" not in last.error
    for case, request in zip(GOOD, good):
        got = _tokens(request)
        assert got == alone[case], f"{case}: in the batch {got} != alone {alone[case]}"
        if case.temperature == 0:
            ids = engine.tokenizer.encode(case.prompt)
            assert got == peft_greedy(tiny_base, folders.get(case.model), ids, case.max_tokens), case
    assert engine.stats.failed.get(code.value, 0) == before.get(code.value, 0) + 1
    assert all(a["in_use"] == 0 for a in engine.loaded_adapters()), "a finished request kept its adapter pinned"
    return last


def test_an_adapter_with_non_finite_logits_fails_alone(served, alone, tiny_base):
    _, engine, folders = served
    good, bad, before, _ = _run_batch_with(engine, Case("lora-nan", "Hello world", 10))
    last = _assert_only_bad_failed(engine, tiny_base, folders, alone, good, bad, ErrorCode.NON_FINITE_LOGITS, before)
    assert "adapter lora-nan@1 produced non-finite logits" in last.error
    # the good rows really shared the bad row's prefill: 6 good + 1 bad rows in one forward
    assert max(engine.stats.batch_sizes) >= len(GOOD)


def test_an_adapter_whose_weights_overflow_when_scaled_hurts_no_other_row(served, alone, tiny_base, tmp_path):
    """``lora_B`` at 1e38 times a scale of 20 is infinite in float32 once the scale is folded in.
    With base rows only beside it, the batch runs side by side (one distinct adapter): the adapter
    is refused at load (the side-by-side kernel's 0 * inf would otherwise poison the base rows), and
    its slot is left empty."""
    from safetensors.torch import load_file, save_file

    registry, engine, _ = served
    folder = save_lora(tiny_base, tmp_path / "inf", seed=5, lora_alpha=80)
    weights = load_file(folder / "adapter_model.safetensors")
    save_file({k: v * 1e38 if "lora_B" in k else v for k, v in weights.items()}, folder / "adapter_model.safetensors")
    registry.push(folder, name="lora-inf", task="test", base=str(tiny_base))
    base_cases = [case for case in GOOD if case.model is None]
    try:
        with held_engine(engine):
            good = [_submit(engine, case) for case in base_cases]
            with pytest.raises(InvalidAdapter, match="not finite once scaled"):
                _submit(engine, Case("lora-inf", "Hello world", 4))
        for case, request in zip(base_cases, good):
            assert _tokens(request) == alone[case]
        assert not engine.is_loaded("lora-inf@1")
        assert _tokens(_submit(engine, GOOD[1])) == alone[GOOD[1]]  # the slot it tried is usable again
    finally:
        _wait(lambda: engine.running == 0)
        engine.unload_adapter("lora-inf@1")


def test_peft_itself_gives_nan_for_the_overflowing_adapter(served, tiny_base, tmp_path):
    """The oracle agrees: the bad row is bad in PEFT too, not made bad by the engine."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = save_overflowing_lora(tiny_base, tmp_path / "nan")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), folder).eval()
    with torch.inference_mode():
        logits = model(torch.tensor([[72, 101, 108]])).logits
    assert not torch.isfinite(logits).all()


def test_a_row_whose_sampling_fails_fails_alone(served, alone, tiny_base):
    """Numbers that slip past validation (here a NaN temperature set behind SamplingParams' back)
    make ``torch.multinomial`` raise for that row only."""
    _, engine, folders = served
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=3)
    object.__setattr__(params, "temperature", math.nan)
    good, bad, before, _ = _run_batch_with(engine, Case(None, "bad numbers", 8), params)
    last = _assert_only_bad_failed(engine, tiny_base, folders, alone, good, bad, ErrorCode.SAMPLING_FAILED, before)
    assert last.error.startswith("the base model failed to sample the next token")


def test_a_row_whose_text_cannot_be_decoded_fails_alone(served, alone, tiny_base, monkeypatch):
    """A tokenizer that raises on one answer's tokens (here: the answer to the victim's prompt)."""
    _, engine, folders = served
    victim = Case("prompt-7", "undecodable", 8)
    marker = _tokens(_submit(engine, victim))[:3]
    assert all(alone[case][:3] != marker for case in GOOD)
    decode = engine.tokenizer.decode

    def picky_decode(ids, *args, **kwargs):
        if list(ids[:3]) == marker:
            raise ValueError("injected decode fault")
        return decode(ids, *args, **kwargs)

    monkeypatch.setattr(engine.tokenizer, "decode", picky_decode)
    good, bad, before, _ = _run_batch_with(engine, victim)
    last = _assert_only_bad_failed(engine, tiny_base, folders, alone, good, bad, ErrorCode.DETOKENIZE_FAILED, before)
    assert "injected decode fault" in last.error


def test_a_failing_prefill_is_retried_request_by_request(served, alone, tiny_base):
    """A request that breaks the shared prefill (its soft prompt's embeddings do not fit the model)
    fails alone; those admitted with it are prefilled again without it."""
    _, engine, folders = served
    before = dict(engine.stats.failed)
    with held_engine(engine):
        good = [_submit(engine, case) for case in GOOD]
        broken = _submit(engine, Case("prompt-4", "broken", 5))
        broken.soft_prompt = replace(broken.soft_prompt, embeddings=torch.zeros(4, 3))
    _assert_only_bad_failed(engine, tiny_base, folders, alone, good, broken, ErrorCode.INTERNAL_ERROR, before)


def test_a_fault_after_the_prefill_joined_fails_each_row_once(served, alone, monkeypatch):
    """A fault once the prefilled rows are in the batch (here: the first draw of the joint prefill
    raises) is the batch's: every joined request ends once with ``internal_error``, none is
    prefilled a second time (two rows feeding one answer), every pin is released, and the next
    requests answer as they would alone."""
    from adapterhub.server.engine import scheduler

    _, engine, _ = served
    real_sample, faults = scheduler.sample, []

    def faulty_sample(logits, rows, *generated):
        if len(rows) == len(GOOD) and not faults:
            faults.append(len(rows))
            raise RuntimeError("injected fault after the join")
        return real_sample(logits, rows, *generated)

    monkeypatch.setattr(scheduler, "sample", faulty_sample)
    with held_engine(engine):
        good = [_submit(engine, case) for case in GOOD]
    for request in good:
        events = list(request.stream)
        assert [e.finish_reason for e in events] == ["error"] and events[0].error_code == ErrorCode.INTERNAL_ERROR
    time.sleep(0.5)
    assert all(r.stream._events.empty() for r in good), "a request got events after its last one"
    assert faults == [len(GOOD)] and engine.running == 0
    assert all(a["in_use"] == 0 for a in engine.loaded_adapters())
    for case in GOOD:
        assert _tokens(_submit(engine, case)) == alone[case]


# --- SamplingParams --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=1e-45), "temperature"),
    (dict(temperature=0.009), "temperature"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=2.01), "temperature"),
    (dict(temperature=math.inf), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature="1"), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(top_p=1.0001), "top_p"),
    (dict(top_p=math.nan), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=True), "max_tokens"),
    (dict(max_tokens=2.0), "max_tokens"),
    (dict(seed=2**128), "seed"),
    (dict(seed=-(2**128)), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(seed=True), "seed"),
    (dict(stop=("",)), "stop"),
    (dict(stop="abc"), "stop"),
    (dict(stop=("x" * (MAX_STOP_CHARS + 1),)), "stop"),
    (dict(stop=tuple(str(i) for i in range(MAX_STOP_STRINGS + 1))), "stop"),
    (dict(stop=(3,)), "stop"),
])
def test_sampling_params_refuse_unsafe_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_sampling_params_accept_the_edges_and_reduce_the_seed():
    assert SamplingParams(temperature=0.01).temperature == 0.01
    assert SamplingParams(temperature=2).temperature == 2
    assert SamplingParams(top_p=1e-9, stop=("x" * MAX_STOP_CHARS,) * MAX_STOP_STRINGS).top_p == 1e-9
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1
    assert SamplingParams(seed=2**64).seed == 0  # what the HTTP layer asks for the 2nd of n choices
    assert SamplingParams(seed=-1).seed == 2**64 - 1
    assert SamplingParams(seed=2**128 - 1).seed == 2**64 - 1
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")


def test_the_sampler_stays_finite_at_extreme_but_valid_values():
    big = torch.finfo(torch.float32).max
    logits = torch.tensor([[big, -big, 0.0, big / 2], [1e4, 1e4 - 1, -1e4, 0.0]])
    for temperature in (0.01, 2.0):
        for top_p in (1.0, 1e-9):
            params = SamplingParams(temperature=temperature, top_p=top_p, seed=1)
            rows = [(params, new_generator(params, logits.device)) for _ in range(2)]
            assert sample(logits, rows) in ([0, 0], [0, 1]), (temperature, top_p)


def test_the_sampler_fails_only_the_non_finite_row():
    logits = torch.tensor([[0.0, 5.0, 1.0], [math.nan, 1.0, 2.0], [math.inf, 0.0, 0.0], [3.0, 2.0, 1.0]])
    greedy = SamplingParams(temperature=0)
    out = sample(logits, [(greedy, None)] * 4)
    assert out[0] == 1 and out[3] == 0
    assert all(isinstance(f, RowFailure) and f.code == ErrorCode.NON_FINITE_LOGITS for f in out[1:3])


# --- admission and cancellation -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_engine(tiny_base, tmp_path_factory):
    """One batch row and room for two waiting requests."""
    workdir = tmp_path_factory.mktemp("admission")
    registry = LocalRegistry(workdir / "registry")
    push_serving_adapters(registry, tiny_base, workdir / "adapters")
    loaded = load_base_model(str(tiny_base), quantize="none", device="cpu")
    engine = create_engine(loaded, registry, max_batch_size=1, max_loaded_adapters=4, max_queued_requests=2).start()
    yield engine
    engine.stop()


def _wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _params(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0)


def test_a_full_queue_refuses_before_loading_and_leaks_nothing(small_engine):
    engine = small_engine
    refused_before = engine.stats.rejected_queue_full
    with held_engine(engine):  # the opener holds the batch's only row
        queued = [engine.submit([72, 105], _params(4), engine.resolve(m)) for m in ("lora-qv", "prompt-4")]
        assert engine.queued == 2
        with pytest.raises(QueueFull) as refused:
            engine.submit([72, 105], _params(4), engine.resolve("lora-all"))
        assert isinstance(refused.value, RuntimeError) and refused.value.retry_after_s >= 1
        assert "busy" in str(refused.value)
        assert not engine.is_loaded("lora-all@1"), "an adapter was loaded for a refused request"
        assert engine.stats.rejected_queue_full == refused_before + 1
    for request in queued:
        assert _tokens(request)
    assert engine.queued == 0
    assert _tokens(engine.submit([72], _params(2)))  # room again


def test_cancelled_requests_leave_the_queue_and_the_batch_at_once(small_engine):
    engine = small_engine
    cancelled_before = engine.stats.cancelled
    long = engine.submit([72, 105], _params(400), engine.resolve("lora-qv"))
    stream = iter(long.stream)
    assert next(stream).finish_reason is None  # decoding now, holding the only row
    waiting = engine.submit([72], _params(400), engine.resolve("prompt-4"))
    assert engine.queued == 1
    assert {a["ref"]: a["in_use"] for a in engine.loaded_adapters()}.get("prompt-4@1") == 1
    waiting.stream.cancel()
    assert _wait(lambda: waiting.stream.finished_at is not None, 5), "a cancelled queued request stayed queued"
    assert long.stream.finished_at is None, "the queued request only left when the running one ended"
    long.stream.cancel()
    assert _wait(lambda: long.stream.finished_at is not None, 5)
    reasons = [e.finish_reason for e in stream][-1], list(waiting.stream)[-1].finish_reason
    assert reasons == ("cancelled", "cancelled")
    assert engine.queued == 0 and engine.running == 0
    assert engine.stats.cancelled == cancelled_before + 2
    assert all(a["in_use"] == 0 for a in engine.loaded_adapters()), "a cancelled request kept its adapter pinned"
    refs = [weakref.ref(long), weakref.ref(waiting)]
    del long, waiting, stream
    gc.collect()
    assert all(r() is None for r in refs), "the engine still references a cancelled request"


def test_stopping_fails_queued_requests_with_shutting_down(tiny_base, tmp_path):
    registry = LocalRegistry(tmp_path / "registry")
    loaded = load_base_model(str(tiny_base), quantize="none", device="cpu")
    engine = create_engine(loaded, registry, max_batch_size=1, max_queued_requests=4).start()
    requests = [engine.submit([72], _params(300)) for _ in range(3)]
    engine.stop()
    codes = [list(r.stream)[-1].error_code for r in requests]
    assert ErrorCode.SHUTTING_DOWN in codes and engine.queued == 0


# --- through the HTTP server ----------------------------------------------------------------------


def test_http_six_good_requests_and_a_tiny_temperature(served, alone):
    """The issue's scenario: 6 concurrent base/LoRA/soft-prompt completions plus one with
    temperature 1e-45: the 6 get their normal answers, the bad one a 400."""
    import http.client

    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.wsgi import start_in_thread

    registry, engine, _ = served
    six = [case for case in GOOD if case.temperature == 0] + [Case(None, "Hello world", 14)]
    bad = {"model": "lora-qv", "prompt": "Hello world", "max_tokens": 8, "temperature": 1e-45}

    def body(case: Case) -> dict[str, Any]:
        return {"model": case.model or engine.base_name, "prompt": case.prompt, "max_tokens": case.max_tokens,
                "temperature": 0, "return_token_ids": True}

    with start_in_thread(create_app(registry, engine=engine), threads=8, stream_tokens=True) as server:
        def post(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            conn.request("POST", "/v1/completions", json.dumps(doc), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())

        with ThreadPoolExecutor(7) as pool:
            answers = list(pool.map(post, [body(c) for c in six] + [bad]))
        # the HTTP layer seeds the j-th of n choices with seed + j: the largest seed still works
        wraps = post({"model": "lora-qv", "prompt": "x", "max_tokens": 3, "temperature": 1.0, "seed": 2**64 - 1,
                      "n": 2})
        overflow = post({"model": "lora-nan", "prompt": "Hello world", "max_tokens": 4, "temperature": 0})
    for case, (status, doc) in zip(six, answers):
        assert status == 200, doc
        assert doc["choices"][0]["token_ids"] == alone[case], case
    status, doc = answers[-1]
    assert status == 400 and "temperature" in doc["error"]["message"], doc
    assert wraps[0] == 200 and len(wraps[1]["choices"]) == 2, wraps
    assert overflow[0] == 422 and overflow[1]["error"]["code"] == "non_finite_logits", overflow
