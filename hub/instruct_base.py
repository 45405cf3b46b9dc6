"""A short instruction-tuning pass for the tiny base, before any adapter is trained on it.

The field's order is pre-train, instruction-tune, then adapt. The tiny base starts from random
weights, so it knows neither the chat template nor when to stop; a soft prompt (which only adds a
few input vectors) has nothing to steer on such a model. A full fine-tune of all ~0.9 M weights on
``hub.datasets.demo``'s ``instruct`` mix (repeat a word or a question, decline when told to) teaches
the template, copying, the refusal sentence and the end token in about a minute of CPU. The
result is written like any base (weights, tokenizer, chat template) with an
``adapterhub_instruct.json`` record of how it was made.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .atomic_file import staged_folder

__all__ = ["INSTRUCT_RECORD", "instruct_tune_base"]

INSTRUCT_RECORD = "adapterhub_instruct.json"


def instruct_tune_base(base_dir: str | os.PathLike, out_dir: str | os.PathLike, data_file: str | os.PathLike, *,
                       max_steps: int = 600, lr: float = 3e-3, batch_size: int = 32, seed: int = 0,
                       threads: int | None = None, progress: bool = True) -> Path:
    """Fully fine-tune ``base_dir`` on ``data_file`` and write the tuned base to ``out_dir``.

    The model is written beside ``out_dir`` and renamed into place, so an interrupted run never
    leaves a half base.
    """
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from .train.config import TrainConfig
    from .train.data import data_digest, load_examples
    from .train.trainer import fit, load_tokenizer

    if threads:
        torch.set_num_threads(threads)
    config = TrainConfig(max_steps=max_steps, lr=lr, batch_size=batch_size, seed=seed, save_steps=max_steps,
                         max_length=256)
    tokenizer = load_tokenizer(str(base_dir))
    examples = load_examples(data_file)
    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    out = Path(out_dir)
    with staged_folder(out) as work:
        stats = fit(model, tokenizer, examples, work / "checkpoints", config, progress=progress,
                    description="instruction-tune base")
        shutil.rmtree(work / "checkpoints")
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        record = {"from": str(Path(base_dir).resolve()), "data_sha256": data_digest(data_file),
                  "config": config.to_dict(), "steps": stats.steps, "train_loss": stats.train_loss}
        (work / INSTRUCT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out
