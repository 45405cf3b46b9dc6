"""Data file to trained adapter: transformers' ``Trainer`` with a PEFT model, then evaluation.

The loop itself is the Trainer's (optimiser, schedule, gradient accumulation, checkpoints with
optimiser and RNG state, resume); this module chooses the model (full precision or nf4 for QLoRA),
wraps it with the PEFT config, feeds it the response-masked rows from ``data``, and adds the
progress bar, throughput and the signal-safe stop. The output folder holds::

    train_config.json   settings, base and data digest of the run (checked on --resume)
    checkpoints/        resumable Trainer checkpoints
    adapter/            the final PEFT adapter (adapter_config.json + adapter_model.safetensors)
    metrics.json        training and evaluation metrics
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import TrainingConfigError, TrainingInterrupted
from .checkpoint import CHECKPOINTS, catch_stop_signals, prepare_output, run_record
from .config import TrainConfig
from .data import EncodedRow, data_digest, encode_examples, load_examples
from .evaluate import evaluate_model

__all__ = ["TrainResult", "train_adapter", "fit", "load_tokenizer", "load_base_model", "training_device"]

ADAPTER_DIR = "adapter"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced: the adapter folder, its metrics, and the record for the registry."""

    adapter_dir: Path
    base: str
    metrics: dict[str, float]
    training: dict[str, Any] = field(default_factory=dict)


def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _base_location(base: str) -> str:
    """A local folder as an absolute path (so the adapter's config works from anywhere), else the Hub id."""
    return str(Path(base).resolve()) if os.path.isdir(base) else base


def load_tokenizer(base: str) -> Any:
    """The base's tokenizer; one without a pad token pads with its end token (masked from the loss)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as e:
        raise TrainingConfigError(
            f"base {base}: cannot load its tokenizer (not a model folder or reachable Hub id)"
        ) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(base: str, method: str, device: str) -> Any:
    """The frozen base: full precision, or nf4 with k-bit preparation for QLoRA."""
    try:
        if method == "qlora":
            from .qlora import load_4bit_base

            return load_4bit_base(base, device)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(base).to(device)
    except (OSError, ValueError) as e:
        raise TrainingConfigError(f"base {base}: cannot load the model ({str(e).splitlines()[0]})") from e


def _check_target_modules(model: Any, targets: Sequence[str]) -> None:
    """Name an unknown target module before PEFT fails with a long message."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if type(m).__name__ in ("Linear", "Linear4bit") and n.rsplit(".", 1)[-1] != "lm_head"})
    missing = [t for t in targets if t != "all-linear" and t not in names]
    if missing:
        raise TrainingConfigError(
            f"target module(s) {', '.join(missing)} not in the base (its linear modules: {', '.join(linear)})"
        )


def _peft_config(config: TrainConfig, base: str) -> Any:
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if config.is_lora:
        targets: Any = list(config.target_modules) or None
        if targets == ["all-linear"]:
            targets = "all-linear"
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.r, lora_alpha=config.alpha,
                          lora_dropout=config.dropout, target_modules=targets)
    if config.prompt_init_text:
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.TEXT,
                                  prompt_tuning_init_text=config.prompt_init_text, tokenizer_name_or_path=base)
    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens)


class _Rows:
    """The encoded rows as the map-style dataset the Trainer's dataloader indexes."""

    def __init__(self, rows: Sequence[EncodedRow]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        r = self.rows[i]
        return {"input_ids": r.input_ids, "labels": r.labels}


@dataclass(frozen=True)
class FitStats:
    """What ``fit`` reports: the step reached (counting steps before a resume), the loss, this session's speed."""

    steps: int
    train_loss: float
    tokens_per_s: float
    runtime_s: float


def fit(model: Any, tokenizer: Any, rows: Sequence[EncodedRow], checkpoint_dir: Path, config: TrainConfig, *,
        resume_from: Path | None = None, progress: bool = True, description: str = "train") -> FitStats:
    """Run the Trainer on ``rows``; raise ``TrainingInterrupted`` after a signal (checkpoint saved)."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .progress import ProgressBar, SaveAndStopOnSignal, Throughput

    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        lr_scheduler_type="linear",
        warmup_steps=0.05,
        weight_decay=0.0,
        logging_steps=5,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=training_device() == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(rows), data_collator=collator)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    throughput = Throughput()
    trainer.add_callback(throughput)
    if progress:
        trainer.add_callback(ProgressBar(throughput, description))
    started = time.perf_counter()
    with catch_stop_signals() as stop:
        trainer.add_callback(SaveAndStopOnSignal(stop))
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stop.requested:
        step = trainer.state.global_step
        where = checkpoint_dir / f"checkpoint-{step}"
        raise TrainingInterrupted(f"training stopped at step {step}; checkpoint {where} (continue with --resume)",
                                  checkpoint=str(where))
    return FitStats(steps=trainer.state.global_step, train_loss=float(output.training_loss),
                    tokens_per_s=throughput.tokens_per_s, runtime_s=time.perf_counter() - started)


def train_adapter(base: str, train_file: str | Path, output_dir: str | Path, config: TrainConfig, *,
                  eval_file: str | Path | None = None, resume: bool = False, progress: bool = True,
                  compare_base: bool = True, threads: int | None = None) -> TrainResult:
    """Train one adapter on ``train_file`` and evaluate it on ``eval_file``.

    Order matters for "nothing happens on bad input": data files are read and checked, then the
    tokenizer, base model and target modules, and only then does the output folder get written.
    ``compare_base`` also evaluates the bare base (adapter disabled), so the registry entry says
    how much the adapter adds. ``threads`` sets torch's CPU threads for this process (on a
    shared machine one thread per process avoids the oversubscription that makes steps 5x slower).
    """
    import torch
    from peft import get_peft_model
    from transformers import set_seed

    train_file, output_dir = Path(train_file), Path(output_dir)
    train_examples = load_examples(train_file)
    eval_examples = load_examples(eval_file) if eval_file is not None else None
    base = _base_location(base)
    tokenizer = load_tokenizer(base)
    train_data = encode_examples(train_examples, tokenizer, config.max_length)
    if not train_data.rows:
        raise TrainingConfigError(f"{train_file}: no row keeps a response token within max_length={config.max_length}")
    eval_data = encode_examples(eval_examples, tokenizer, config.max_length) if eval_examples else None

    if threads:
        torch.set_num_threads(threads)
    device = training_device()
    set_seed(config.seed)
    model = load_base_model(base, config.method, device)
    if config.is_lora:
        _check_target_modules(model, config.target_modules)
    try:
        model = get_peft_model(model, _peft_config(config, base))
    except ValueError as e:
        raise TrainingConfigError(f"cannot build the {config.method} adapter: {str(e).splitlines()[0]}") from e

    digest = data_digest(train_file)
    run = run_record(config, base, digest)
    resume_from = prepare_output(output_dir, run, resume)
    stats = fit(model, tokenizer, train_data.rows, output_dir / CHECKPOINTS, config, resume_from=resume_from,
                progress=progress, description=f"train {config.method}")

    adapter_dir = output_dir / ADAPTER_DIR
    model.save_pretrained(adapter_dir)
    metrics: dict[str, float] = {
        "train_loss": stats.train_loss,
        "train_steps": stats.steps,
        "train_rows": len(train_data.rows),
        "train_tokens_per_s": stats.tokens_per_s,
        "train_runtime_s": stats.runtime_s,
        "truncated_rows": train_data.truncated,
        "dropped_rows": train_data.dropped,
    }
    if eval_data is not None and eval_examples:
        adapted = evaluate_model(model, tokenizer, eval_examples, eval_data.rows, config.eval_batch_size)
        metrics.update(adapted.metrics("eval_"))
        metrics["eval_rows"] = len(eval_examples)
        if compare_base:
            with model.disable_adapter(), torch.no_grad():
                metrics.update(evaluate_model(model, tokenizer, eval_examples, eval_data.rows,
                                              config.eval_batch_size).metrics("base_eval_"))
    training: dict[str, Any] = {
        "config": config.to_dict(),
        "base": base,
        "data": {"train": str(train_file), "train_sha256": digest, "train_rows": len(train_examples)},
        "prompt_template": "chat_template" if getattr(tokenizer, "chat_template", None) else "alpaca",
        "device": device,
        "trainer": "transformers.Trainer",
    }
    if eval_file is not None:
        training["data"].update(eval=str(eval_file), eval_sha256=data_digest(eval_file))
    if config.method == "qlora":
        from .qlora import quantization_summary

        training["quantization"] = quantization_summary(device)
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return TrainResult(adapter_dir=adapter_dir, base=base, metrics=metrics, training=training)
