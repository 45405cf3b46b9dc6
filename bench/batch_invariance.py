"""Batch invariance through ``adapterhub serve``, per quantization mode: does a row's greedy answer
depend on what it is batched with?

One server process per mode (``--modes``) on one base (``--base``: a model folder, e.g. the real
SmolLM2-135M-Instruct copy; default a random SmolLM2-135M-shaped base), with rank-16 LoRAs on all
linear layers and soft prompts (PEFT-made) in its registry. Each trial draws ``--requests`` requests
with prompts of different lengths, spread over LoRA, soft-prompt and base rows; each is first sent
alone, then all are sent at once from client threads that start at random moments within
``--stagger`` seconds, so rows join a batch that is already decoding, next to prompts of other
lengths. A row that differs from its alone answer is a failure of batch invariance.

    python bench/batch_invariance.py --base ~/.cache/adapterhub/bases/smollm2 --trials 5

Prints one JSON line per trial and mode and a summary: rows differing, per mode, per trial.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from hetero_lora_bench import build_base, emit, make_adapters  # noqa: E402
from serve_load import ServerProcess  # noqa: E402

from adapterhub.registry import LocalRegistry  # noqa: E402


def make_soft_prompts(base: Path, out: Path, count: int, virtual_tokens: int) -> list[Path]:
    """``count`` PEFT prompt-tuning adapters with random (seeded) virtual token embeddings."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = []
    for i in range(count):
        torch.manual_seed(2000 + i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                               PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens))
        path = out / f"prompt-{i}"
        model.save_pretrained(path)
        made.append(path)
    return made


def greedy(server: ServerProcess, model: str, ids: list[int], new: int) -> list[int]:
    """The greedy answer's token ids (``return_token_ids``, our extension)."""
    doc = server.post("/v1/completions", {"model": model, "prompt": ids, "max_tokens": new, "temperature": 0,
                                          "return_token_ids": True})
    return doc["choices"][0]["token_ids"]


def concurrently(server: ServerProcess, jobs: list[tuple[str, list[int]]], new: int, stagger: float,
                 rng: random.Random) -> list[list[int]]:
    """Every job from its own thread, each starting after a random delay within ``stagger`` s."""
    delays = [rng.uniform(0, stagger) for _ in jobs]
    out: list[list[int] | None] = [None] * len(jobs)
    errors: list[str] = []

    def run(i: int) -> None:
        time.sleep(delays[i])
        try:
            out[i] = greedy(server, jobs[i][0], jobs[i][1], new)
        except Exception as e:  # reported, never hidden
            errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return out  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=None, help="model folder (default: a random SmolLM2-135M-shaped base)")
    ap.add_argument("--modes", nargs="+", default=["none", "bf16", "int8", "nf4"])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--min-prompt", type=int, default=3)
    ap.add_argument("--max-prompt", type=int, default=120)
    ap.add_argument("--stagger", type=float, default=1.5, help="seconds over which the concurrent requests start")
    ap.add_argument("--save", default=None, help="write the summary document to this JSON file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.base is None:
            base = work / "base"
            build_base(base, "smol135m", torch.device("cpu"), torch.float32)
        else:
            base = Path(args.base)
        loras = make_adapters(base, work / "adapters", {16: 3}, torch.device("cpu"), torch.float32)[16]
        prompts = make_soft_prompts(base, work / "adapters", 2, 8)
        registry = LocalRegistry(work / "registry")
        models = [registry.push(p, name=p.name, task="bench", base=str(base)).ref for p in loras + prompts]
        models.append(str(base))
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(base).vocab_size
        rng = random.Random(0)
        trials = []
        for _ in range(args.trials):
            jobs = []
            for i in range(args.requests):
                length = rng.randint(args.min_prompt, args.max_prompt)
                jobs.append((models[i % len(models)], [rng.randrange(3, vocab) for _ in range(length)]))
            trials.append(jobs)
        summary: dict[str, list[int]] = {}
        for mode in args.modes:
            common = ("--device", "cpu", "--quantize", mode, "--max-batch-size", str(args.requests),
                      "--max-loaded-adapters", "8", "--max-lora-rank", "16", "--threads", str(args.requests + 4))
            with ServerProcess(base, work / "registry", *common) as server:
                for model in models[:-1]:
                    server.post("/v1/adapters/load", {"model": model})
                differing = []
                for t, jobs in enumerate(trials):
                    alone = [greedy(server, m, ids, args.new) for m, ids in jobs]
                    together = concurrently(server, jobs, args.new, args.stagger, rng)
                    rows = [i for i in range(len(jobs)) if together[i] != alone[i]]
                    differing.append(len(rows))
                    first = {i: next((k for k, (a, b) in enumerate(zip(alone[i], together[i])) if a != b), None)
                             for i in rows}
                    emit(mode=mode, trial=t, rows=len(jobs), rows_differing=len(rows),
                         first_differing_token=first, prompt_lengths=[len(ids) for _, ids in jobs])
                summary[mode] = differing
    doc = {"config": vars(args), "rows_differing_per_trial": summary}
    print(json.dumps(doc, indent=2))
    if args.save:
        Path(args.save).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
