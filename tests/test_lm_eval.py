"""lm-eval scores an adapter served by ``adapterhub serve`` exactly as it scores the PEFT adapter folder.

Both numbers are lm-eval's own: ``--model local-completions`` against the server's
``/v1/completions`` (which scores each choice through ``echo`` + ``logprobs``), and ``--model hf``
with ``peft=<the adapter folder>``, on the local multiple-choice task in ``tests/lm_eval_task/``
(30 questions, 4 choices). Beyond equal accuracy, every choice's log-likelihood agrees within
1e-3, and differs from the bare base's (so the adapter really was applied).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from adapterhub.location import open_registry
from conftest import save_lora
from serving_helpers import start_serve_process

lm_eval = pytest.importorskip("lm_eval")

TASK_DIR = Path(__file__).parent / "lm_eval_task"
TASK = "adapterhub_tiny_mc"


def _evaluate(model: str, model_args: str, batch_size: int) -> tuple[float, list[list[float]]]:
    """lm-eval's accuracy on the task and each question's per-choice log-likelihoods (in doc order)."""
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASK],
                                  task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False),
                                  log_samples=True, batch_size=batch_size, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0)
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    return out["results"][TASK]["acc,none"], [[float(r[0]) for r in s["filtered_resps"]] for s in samples]


def test_lm_eval_scores_the_served_adapter_as_it_scores_peft(tiny_base, tmp_path, _private_registry, monkeypatch):
    monkeypatch.chdir(TASK_DIR)  # the task's data_files are relative to it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    folder = save_lora(tiny_base, tmp_path / "mc-lora", seed=21, r=8, lora_alpha=32,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    open_registry(str(_private_registry)).push(folder, name="mc-lora", task="mc", base=str(tiny_base))
    proc, url, _ = start_serve_process(["--base", str(tiny_base), "--quantize", "none"], dict(os.environ))
    try:
        served_acc, served = _evaluate("local-completions", ",".join([
            "model=mc-lora", f"base_url={url}/v1/completions", f"tokenizer={tiny_base}",
            "tokenizer_backend=huggingface", "tokenized_requests=True", "num_concurrent=1", "max_retries=1"]),
            batch_size=8)  # eight prompts per request: the server scores them in one batch
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    peft_acc, peft = _evaluate("hf", f"pretrained={tiny_base},peft={folder},dtype=float32,device=cpu", 32)
    _, base = _evaluate("hf", f"pretrained={tiny_base},dtype=float32,device=cpu", 32)

    assert len(served) == len(peft) == 30 and all(len(s) == 4 for s in served)
    assert served_acc == peft_acc
    assert all(abs(a - b) < 1e-3 for s, p in zip(served, peft) for a, b in zip(s, p)), (served[:2], peft[:2])
    assert max(abs(a - b) for s, p in zip(served, base) for a, b in zip(s, p)) > 0.1, "the adapter changed nothing"
