"""What each ``--quantize`` mode costs in quality, measured through ``adapterhub serve`` on a real model.

One server process per mode (``--modes``, each against ``--quantize none`` started in the same run)
on ``--base`` (a model folder, e.g. the HF copy of SmolLM2-135M-Instruct; ``--base`` also takes the
``.gguf`` file where GGUF bases are supported). Two measurements per mode, as a user would take them:

* perplexity of a held-out English text (``--text``; default ``bench/data/heldout_prose.txt``), from
  the prompt logprobs a completion with ``echo`` and ``logprobs`` returns; its change against
  ``none``, and the mean / largest absolute difference of the per-token logprobs;
* greedy chat answers (``/v1/chat/completions``, the model's chat template, ``--new`` tokens) to
  everyday prompts (``--prompts``, one per line; default the 16 below): how many are identical to
  ``none``'s, token for token.

    python bench/quantization_quality.py --base ~/.cache/adapterhub/bases/smollm2-135m-instruct

Prints one JSON line per mode and a summary document.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hetero_lora_bench import emit  # noqa: E402
from serve_load import ServerProcess  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "What is the capital of France?", "What is 12 times 7?", "Give me three tips for sleeping better.",
    "Write a haiku about autumn.", "How do I boil an egg?", "What is photosynthesis?",
    "Translate 'good morning' into Spanish.", "Name a famous painting by Leonardo da Vinci.", "Why is the sky blue?",
    "What should I pack for a beach trip?", "How many days are in a leap year?", "Suggest a name for a pet cat.",
    "What is the boiling point of water in Celsius?", "Explain what a noun is.",
    "How can I save money on groceries?", "Who wrote Romeo and Juliet?",
]


def prompt_logprobs(server: ServerProcess, model: str, text: str) -> list[float]:
    """The logprob of every prompt token after the first (``echo``; the one generated token dropped)."""
    doc = server.post("/v1/completions", {"model": model, "prompt": text, "max_tokens": 1, "temperature": 0,
                                          "echo": True, "logprobs": 0})
    values = doc["choices"][0]["logprobs"]["token_logprobs"]
    return [v for v in values[:-1] if v is not None]


def chat_answer(server: ServerProcess, model: str, prompt: str, new: int) -> list[int]:
    doc = server.post("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": prompt}],
                                               "max_tokens": new, "temperature": 0, "return_token_ids": True})
    return doc["choices"][0]["token_ids"]


def measure(server: ServerProcess, model: str, text: str, prompts: list[str], new: int) -> dict:
    return {"logprobs": prompt_logprobs(server, model, text), "answers": [chat_answer(server, model, p, new) for p in prompts]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="a real model folder")
    ap.add_argument("--modes", nargs="+", default=["bf16", "int8"])
    ap.add_argument("--text", default=str(HERE / "data" / "heldout_prose.txt"))
    ap.add_argument("--prompts", default=None, help="a file with one prompt per line (default: 16 built in)")
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--save", default=None, help="write the summary document to this JSON file")
    args = ap.parse_args()
    text = Path(args.text).read_text()
    prompts = PROMPTS if args.prompts is None else [p for p in Path(args.prompts).read_text().splitlines() if p.strip()]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = ("--device", "cpu", "--max-batch-size", "4", "--threads", "8")
        for mode in ["none", *args.modes]:
            with ServerProcess(Path(args.base), Path(tmp) / "registry", "--quantize", mode, *common) as server:
                results[mode] = measure(server, args.base, text, prompts, args.new)
    ref = results["none"]
    ppl_ref = math.exp(-sum(ref["logprobs"]) / len(ref["logprobs"]))
    summary = {"config": {**vars(args), "prompts": len(prompts)}, "tokens_scored": len(ref["logprobs"]),
               "none": {"perplexity": round(ppl_ref, 3)}}
    for mode in args.modes:
        got = results[mode]
        ppl = math.exp(-sum(got["logprobs"]) / len(got["logprobs"]))
        diffs = [abs(a - b) for a, b in zip(got["logprobs"], ref["logprobs"])]
        summary[mode] = {
            "perplexity": round(ppl, 3), "perplexity_change_pct": round(100 * (ppl / ppl_ref - 1), 2),
            "greedy_answers_identical": f"{sum(a == b for a, b in zip(got['answers'], ref['answers']))}/{len(prompts)}",
            "logprob_abs_diff_mean": round(sum(diffs) / len(diffs), 4), "logprob_abs_diff_max": round(max(diffs), 3),
        }
        emit(mode=mode, **summary[mode])
    print(json.dumps(summary, indent=2))
    if args.save:
        Path(args.save).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
