"""Prefix caching: prompts that share a prefix prefill it once, and nothing a row answers changes.

The store alone (blocks, chains, the byte bound, what is never kept), then engines on the tiny base
with the cache on and off side by side: base, LoRA and soft-prompt rows batched together over
prompts that share prefixes of varied length (one ending mid-block, one that is a whole cached
prompt), each row's greedy tokens and logprobs compared with the cache-off engine's, bit for bit on
the packed CPU modes. Then what must never be reused: another adapter's KV (the base's, a LoRA
reloaded under the same name with other weights), and a failed row's. A chat's next turn finds
the previous answer's KV.
"""

from __future__ import annotations

import json
import math
import os
import signal
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from adapterhub.prompt_template import FewShot, PromptTemplate, write_prompt_template
from adapterhub.registry import LocalRegistry
from adapterhub.server.engine.engine import create_engine
from adapterhub.server.engine.model_loader import load_base_model
from adapterhub.server.engine.prefix_cache import BLOCK_TOKENS, PrefixCache, sequence_items
from adapterhub.server.engine.request import SamplingParams
from conftest import save_lora
from serving_helpers import held_engine, post_json, push_serving_adapters, save_overflowing_lora, start_serve_process

LAYERS, HEADS, DIM = 3, 2, 4


def _kv(items: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(HEADS, items, DIM, generator=g) for _ in range(LAYERS)],
            [torch.randn(HEADS, items, DIM, generator=g) for _ in range(LAYERS)])


def _gather(keys, values):
    return lambda lo, hi: ([k[:, lo:hi] for k in keys], [v[:, lo:hi] for v in values])


_BLOCK_BYTES = LAYERS * 2 * HEADS * BLOCK_TOKENS * DIM * 4


# --- the store ------------------------------------------------------------------------------------


def test_a_stored_prefix_comes_back_exactly_up_to_all_but_the_last_item():
    cache = PrefixCache(1 << 20)
    items = list(range(3 * BLOCK_TOKENS))
    keys, values = _kv(len(items))
    root = cache.root(None)
    assert cache.store(root, items, _gather(keys, values)) == 3
    whole = cache.lookup(root, items)  # the whole prompt is cached: its last item is still prefilled
    assert whole.items == len(items) - 1
    mid = cache.lookup(root, items[: 2 * BLOCK_TOKENS + 5] + [999])  # ends mid-block: two blocks back
    assert mid.items == 2 * BLOCK_TOKENS
    for hit in (whole, mid):
        for layer in range(LAYERS):
            assert torch.equal(hit.keys[layer], keys[layer][:, : hit.items])
            assert torch.equal(hit.values[layer], values[layer][:, : hit.items])
    assert cache.lookup(root, [7] + items[1:]) is None  # the first block differs: nothing after it counts
    assert cache.lookup(cache.root("sha256:lora"), items) is None  # another adapter's key
    assert (cache.stats.queries, cache.stats.hits) == (4, 2)


def test_the_byte_bound_holds_and_a_chain_loses_its_deepest_blocks_first():
    cache = PrefixCache(4 * _BLOCK_BYTES)
    root = cache.root(None)
    first = list(range(3 * BLOCK_TOKENS))
    cache.store(root, first, _gather(*_kv(len(first))))
    second = [1000 + i for i in range(2 * BLOCK_TOKENS)]
    cache.store(root, second, _gather(*_kv(len(second), seed=1)))
    assert cache.bytes_resident <= cache.max_bytes and cache.blocks_resident == 4
    assert cache.stats.blocks_evicted == 1
    # the older chain lost its last block, not its first: its first two blocks still serve
    assert cache.lookup(root, first + [5]).items == 2 * BLOCK_TOKENS
    assert cache.lookup(root, second + [5]).items == 2 * BLOCK_TOKENS


def test_non_finite_values_are_never_kept_nor_anything_after_them():
    cache = PrefixCache(1 << 20)
    items = list(range(3 * BLOCK_TOKENS))
    keys, values = _kv(len(items))
    keys[1][0, BLOCK_TOKENS + 3, 0] = math.nan
    root = cache.root(None)
    assert cache.store(root, items, _gather(keys, values)) == 1
    assert cache.lookup(root, items).items == BLOCK_TOKENS


def test_virtual_tokens_are_part_of_every_key():
    assert sequence_items([5, 6], 3) == [-1, -2, -3, 5, 6]
    with pytest.raises(ValueError):
        PrefixCache(0)


# --- engines, cache on and off ----------------------------------------------------------------------

SYSTEM = "You are a careful assistant. Answer in one short sentence, and never make things up. "
CASES = [  # (model, prompt): shared prefixes of varied length over base, LoRA and soft-prompt rows
    (None, SYSTEM + "What is two plus two?"),
    (None, SYSTEM + "Name a colour."),
    ("lora-qv", SYSTEM + "What is two plus two?"),
    ("lora-all", SYSTEM * 2 + "Say hi."),
    ("prompt-4", SYSTEM + "Name a colour."),
    ("prompt-7", SYSTEM[:45]),
    (None, SYSTEM[: 2 * BLOCK_TOKENS]),  # the byte tokenizer: a prompt of exactly two blocks
    (None, SYSTEM[:37]),  # ends mid-block
]


@pytest.fixture(scope="module", params=["bf16", "int8", "none"])
def engines(request, tiny_base, tmp_path_factory):
    """Two engines on the tiny base in one quantization mode, the same registry: cache off, cache on."""
    root = tmp_path_factory.mktemp(f"prefix-{request.param}")
    registry = LocalRegistry(root / "registry")
    push_serving_adapters(registry, tiny_base, root / "adapters")
    pair = [create_engine(load_base_model(str(tiny_base), quantize=request.param, device="cpu"), registry,
                          max_batch_size=8, prefix_cache_bytes=size).start() for size in (0, 64 << 20)]
    yield request.param, registry, pair
    for engine in pair:
        engine.stop()


def _answers(engine, cases, *, together: bool, max_tokens: int = 10):
    def submit(model, prompt):
        ids = engine.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        return engine.submit(ids, SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=2),
                             engine.resolve(model))

    if together:
        with held_engine(engine):
            requests = [submit(*case) for case in cases]
    else:
        requests = [submit(*case) for case in cases]
    out = []
    for request in requests:
        events = list(request.stream)
        assert events[-1].finish_reason in ("stop", "length"), events[-1]
        scored = [e for e in events if e.token_id is not None]
        out.append(([e.token_id for e in scored], [(e.logprob.logprob, e.logprob.top) for e in scored]))
    return out


def _same(mode: str, got, want) -> None:
    for (tokens, scores), (want_tokens, want_scores) in zip(got, want):
        assert tokens == want_tokens
        if mode == "none":
            # torch's float32 BLAS sums a product in an order that depends on how many rows it has:
            # the scores agree to float32 rounding, the tokens exactly (README, "Prefix caching")
            for (lp, top), (want_lp, want_top) in zip(scores, want_scores):
                assert lp == pytest.approx(want_lp, abs=1e-5)
                assert [t for t, _ in top] == [t for t, _ in want_top]
        else:
            assert scores == want_scores


def test_rows_batched_over_cached_prefixes_answer_exactly_as_without_the_cache(engines):
    mode, _, (off, on) = engines
    want = _answers(off, CASES, together=False)
    _same(mode, _answers(on, CASES, together=False), want)  # one by one: later rows find earlier prefixes
    reused = on.prefix_cache.stats.tokens_reused
    assert reused > 0
    _same(mode, _answers(on, CASES, together=True), want)  # all in one prefill, every row a hit
    assert on.prefix_cache.stats.tokens_reused - reused >= sum(
        (len(on.tokenizer.encode(p)) - 1) // BLOCK_TOKENS * BLOCK_TOKENS for _, p in CASES)
    assert on.prefix_cache.bytes_resident <= on.prefix_cache.max_bytes
    assert off.prefix_cache is None


def test_a_base_request_never_reuses_a_loras_prefix(engines):
    _, _, (_, on) = engines
    prompt = "A prompt only the LoRA has seen before, long enough for several blocks of tokens."
    _answers(on, [("lora-qv", prompt)], together=False)
    hits = on.prefix_cache.stats.hits
    _answers(on, [(None, prompt)], together=False)
    assert on.prefix_cache.stats.hits == hits
    _answers(on, [("lora-qv", prompt)], together=False)
    assert on.prefix_cache.stats.hits == hits + 1


def test_other_weights_under_the_same_name_never_reuse_the_old_kv(engines, tiny_base, tmp_path):
    mode, registry, (off, on) = engines
    prompt = [("swap-" + mode, SYSTEM + "Which weights answer this?")]
    registry.push(save_lora(tiny_base, tmp_path / "v1", seed=21), name="swap-" + mode, task="test", base=str(tiny_base))
    first = _answers(on, prompt, together=False)
    registry.push(save_lora(tiny_base, tmp_path / "v2", seed=22), name="swap-" + mode, task="test", base=str(tiny_base))
    hits = on.prefix_cache.stats.hits
    second = _answers(on, prompt, together=False)
    assert on.prefix_cache.stats.hits == hits  # the new version's digest: a key nothing was stored under
    _same(mode, second, _answers(off, prompt, together=False))
    assert second != first


def test_a_failed_row_leaves_nothing_behind(engines, tiny_base, tmp_path):
    _, registry, (_, on) = engines
    name = f"nan-{id(on)}"
    registry.push(save_overflowing_lora(tiny_base, tmp_path / "nan"), name=name, task="test", base=str(tiny_base))
    stored = on.prefix_cache.stats.blocks_stored
    request = on.submit(on.tokenizer.encode(SYSTEM + "overflow"), SamplingParams(max_tokens=4, temperature=0),
                        on.resolve(name))
    assert list(request.stream)[-1].finish_reason == "error"
    assert on.prefix_cache.stats.blocks_stored == stored


@pytest.mark.parametrize("model,virtual", [(None, 0), ("lora-qv", 0), ("prompt-7", 7)])
def test_the_next_chat_turn_reuses_the_previous_answer(engines, model, virtual):
    mode, _, (off, on) = engines
    prompt = f"{model}: tell me a story."
    [(answer, _)] = _answers(on, [(model, prompt)], together=False, max_tokens=40)
    ids = on.tokenizer.encode(prompt) + answer[:-1]  # the answer's last token was never fed back
    follow_up = ids + on.tokenizer.encode(" And then?")
    reused = on.prefix_cache.stats.tokens_reused
    got = _answers(on, [(model, follow_up)], together=False)
    assert on.prefix_cache.stats.tokens_reused - reused >= (virtual + len(ids)) // BLOCK_TOKENS * BLOCK_TOKENS
    _same(mode, got, _answers(off, [(model, follow_up)], together=False))


# --- through `adapterhub serve` ---------------------------------------------------------------------


def _get(url: str, path: str) -> str:
    with urllib.request.urlopen(url + path, timeout=60) as answer:
        return answer.read().decode()


@pytest.fixture(scope="module")
def served_pair(tiny_base, tmp_path_factory):
    """`adapterhub serve` twice on the tiny base and one registry (with a prompt-template adapter of
    6 few-shot pairs): the default cache and ``--prefix-cache-bytes 0``."""
    root = tmp_path_factory.mktemp("prefix-serve")
    registry = LocalRegistry(root / "registry")
    push_serving_adapters(registry, tiny_base, root / "adapters")
    template = PromptTemplate(system="Answer in one word.", template="Q: {input}\nA:",
                              examples=tuple(FewShot(f"question {i} on rivers", f" a{i}")
                                             for i in range(6)))
    registry.push(write_prompt_template(template, root / "fewshot"), name="fewshot", task="qa", base=str(tiny_base))
    env = dict(os.environ, ADAPTERHUB_REGISTRY=str(root / "registry"))
    servers = [start_serve_process(["--base", str(tiny_base), *extra], env)
               for extra in ([], ["--prefix-cache-bytes", "0"])]
    yield [url for _, url, _ in servers]
    for proc, _, _ in servers:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_served_answers_are_the_same_with_and_without_the_cache_and_the_reuse_is_reported(served_pair):
    on, off = served_pair
    requests = [("/v1/completions", {"model": "fewshot", "prompt": "what flows?"}),
                ("/v1/completions", {"model": "fewshot", "prompt": "what is wet?"}),
                ("/v1/completions", {"model": "lora-qv", "prompt": SYSTEM + "Say hi."}),
                ("/v1/completions", {"model": "prompt-4", "prompt": SYSTEM + "Say hi."}),
                ("/v1/chat/completions", {"model": "lora-all", "messages": [{"role": "user", "content": SYSTEM}]})]
    for path, body in requests * 2:  # the second round finds every prefix the first kept
        body = body | {"max_tokens": 8, "temperature": 0, "logprobs": True, "return_token_ids": True}
        if path == "/v1/completions":
            body["logprobs"] = 2
        answers = [post_json(url, path, body) for url in (on, off)]
        assert answers[0][0] == answers[1][0] == 200, answers
        strip = [{k: v for k, v in a[1].items() if k not in ("id", "created")} for a in answers]
        assert strip[0] == strip[1], body
    health = json.loads(_get(on, "/health"))["prefix_cache"]
    assert health["hits"] >= 5 and health["tokens_reused"] > 0 and 0 < health["bytes"] <= health["max_bytes"]
    assert json.loads(_get(off, "/health"))["prefix_cache"] is None
    metrics = {s.name: s.value for family in text_string_to_metric_families(_get(on, "/metrics"))
               for s in family.samples}
    assert metrics["adapterhub_prefix_cache_hits_total"] == health["hits"]
    assert metrics["adapterhub_prefix_cache_tokens_reused_total"] == health["tokens_reused"]
    assert metrics["vllm:prefix_cache_hits_total"] == health["tokens_reused"]
    assert metrics["vllm:prefix_cache_queries_total"] == health["tokens_queried"]
    assert metrics["adapterhub_prefix_cache_bytes"] == health["bytes"]
    assert "adapterhub_prefix_cache_hits_total" not in _get(off, "/metrics")
