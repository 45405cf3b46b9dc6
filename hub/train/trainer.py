"""Data file to trained adapter: TRL's ``SFTTrainer`` with a PEFT config, then evaluation.

The loop, the tokenizing and the label masks are TRL's (``sft.py``; optimiser, schedule, gradient
accumulation, checkpoints with optimiser and RNG state, resume); this module chooses the model
(full precision or nf4 for QLoRA) and the PEFT config, and adds the progress bar, throughput and
the signal-safe stop. The output folder holds::

    train_config.json   settings, base and data digest of the run (checked on --resume)
    checkpoints/        resumable Trainer checkpoints
    adapter/            the final PEFT adapter (adapter_config.json + adapter_model.safetensors)
    metrics.json        training and evaluation metrics
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..base_model import model_location
from ..gguf_base import is_gguf
from ..errors import TrainingConfigError, TrainingDataError, TrainingInterrupted
from .checkpoint import CHECKPOINTS, catch_stop_signals, prepare_output, run_record
from .config import TrainConfig
from .data import Example, data_digest, load_examples
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
    """A local folder or GGUF file as an absolute path (so the adapter's config works from anywhere),
    else the Hub id."""
    return str(Path(base).resolve()) if os.path.isdir(base) or is_gguf(base) else base


def load_tokenizer(base: str) -> Any:
    """The base's tokenizer; one without a pad token pads with its end token (masked from the loss)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_location(base))
    except (OSError, ValueError) as e:
        raise TrainingConfigError(
            f"base {base}: cannot load its tokenizer (not a model folder or reachable Hub id)"
        ) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(base: str, method: str, device: str) -> Any:
    """The frozen base: full precision, or nf4 with k-bit preparation for QLoRA."""
    files = model_location(base)
    try:
        if method == "qlora":
            from .qlora import load_4bit_base

            return load_4bit_base(files, device)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(files).to(device)
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
                                  prompt_tuning_init_text=config.prompt_init_text,
                                  tokenizer_name_or_path=model_location(base))
    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens)


@dataclass(frozen=True)
class FitStats:
    """What ``fit`` reports: the step reached (counting steps before a resume), the loss, this session's
    speed, the trained model (a PEFT model when a ``peft_config`` was given) and the rows TRL kept."""

    steps: int
    train_loss: float
    tokens_per_s: float
    runtime_s: float
    model: Any = None
    train_rows: int = 0
    truncated_rows: int = 0
    eval_rows: list[dict[str, list[int]]] = field(default_factory=list)


def _at_max_length(dataset: Any, max_length: int) -> int:
    return sum(1 for ids in dataset["input_ids"] if len(ids) >= max_length)


def fit(model: Any, tokenizer: Any, examples: Sequence[Example], checkpoint_dir: Path, config: TrainConfig, *,
        eval_examples: Sequence[Example] | None = None, peft_config: Any = None,
        before_training: Callable[[], Path | None] | None = None, progress: bool = True,
        description: str = "train") -> FitStats:
    """Run TRL's ``SFTTrainer`` on ``examples``; raise ``TrainingInterrupted`` after a signal (checkpoint saved).

    ``before_training`` runs once the trainer is built (data tokenized, adapter attached) and before
    the first step, and returns the checkpoint to resume from: the place to check and write the run
    folder, so bad input never leaves one behind.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .progress import ProgressBar, SaveAndStopOnSignal, Throughput
    from .sft import build_trainer

    trainer = build_trainer(model, tokenizer, examples, checkpoint_dir, config, eval_examples=eval_examples,
                            peft_config=peft_config, use_cpu=training_device() == "cpu")
    resume_from = before_training() if before_training is not None else None
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
    eval_rows = ([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in trainer.eval_dataset]
                 if trainer.eval_dataset is not None else [])
    truncated = 0 if config.packing else _at_max_length(trainer.train_dataset, config.max_length)
    return FitStats(steps=trainer.state.global_step, train_loss=float(output.training_loss),
                    tokens_per_s=throughput.tokens_per_s, runtime_s=time.perf_counter() - started,
                    model=trainer.model, train_rows=len(trainer.train_dataset), truncated_rows=truncated,
                    eval_rows=eval_rows)


def train_adapter(base: str, train_file: str | Path, output_dir: str | Path, config: TrainConfig, *,
                  eval_file: str | Path | None = None, resume: bool = False, progress: bool = True,
                  compare_base: bool = True, threads: int | None = None) -> TrainResult:
    """Train one adapter on ``train_file`` and evaluate it on ``eval_file``.

    Order matters for "nothing happens on bad input": data files are read and checked, then the
    tokenizer, base model and target modules, then TRL tokenizes, and only then does the output
    folder get written. ``compare_base`` also evaluates the bare base (adapter disabled), so the
    registry entry says how much the adapter adds. ``threads`` sets torch's CPU threads for this
    process (on a shared machine one thread per process avoids the oversubscription that makes
    steps 5x slower).
    """
    import torch
    from transformers import set_seed

    from .sft import check_report_to, with_run_template

    check_report_to(config)
    train_file, output_dir = Path(train_file), Path(output_dir)
    train_examples = load_examples(train_file)
    eval_examples = load_examples(eval_file) if eval_file is not None else None
    base = _base_location(base)
    tokenizer = with_run_template(load_tokenizer(base), config)

    if threads:
        torch.set_num_threads(threads)
    device = training_device()
    set_seed(config.seed)
    model = load_base_model(base, config.method, device)
    if config.is_lora:
        _check_target_modules(model, config.target_modules)

    digest = data_digest(train_file)
    run = run_record(config, base, digest)
    prepared: list[Path | None] = []

    def prepare() -> Path | None:
        prepared.append(prepare_output(output_dir, run, resume))
        return prepared[0]

    with _removed_on_failure(output_dir, unless=lambda: bool(prepared)):
        stats = fit(model, tokenizer, train_examples, output_dir / CHECKPOINTS, config, eval_examples=eval_examples,
                    peft_config=_peft_config(config, base), before_training=prepare, progress=progress,
                    description=f"train {config.method}")
    model = stats.model
    adapter_dir = output_dir / ADAPTER_DIR
    model.save_pretrained(adapter_dir)
    metrics: dict[str, float] = {
        "train_loss": stats.train_loss,
        "train_steps": stats.steps,
        "train_rows": stats.train_rows,
        "train_tokens_per_s": stats.tokens_per_s,
        "train_runtime_s": stats.runtime_s,
        "truncated_rows": stats.truncated_rows,
        "dropped_rows": 0 if config.packing else len(train_examples) - stats.train_rows,
    }
    if eval_examples:
        adapted = evaluate_model(model, tokenizer, eval_examples, stats.eval_rows, config.eval_batch_size)
        metrics.update(adapted.metrics("eval_"))
        metrics["eval_rows"] = len(eval_examples)
        if compare_base:
            with model.disable_adapter(), torch.no_grad():
                metrics.update(evaluate_model(model, tokenizer, eval_examples, stats.eval_rows,
                                              config.eval_batch_size).metrics("base_eval_"))
    training: dict[str, Any] = {
        "config": config.to_dict(),
        "base": base,
        "data": {"train": str(train_file), "train_sha256": digest, "train_rows": len(train_examples),
                 "kind": train_examples[0].kind},
        "prompt_template": _template_name(config, tokenizer),
        "device": device,
        "trainer": f"trl.SFTTrainer {_version('trl')}",
    }
    if eval_file is not None:
        training["data"].update(eval=str(eval_file), eval_sha256=data_digest(eval_file))
    if config.method == "qlora":
        from .qlora import quantization_summary

        training["quantization"] = quantization_summary(device)
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return TrainResult(adapter_dir=adapter_dir, base=base, metrics=metrics, training=training)


def _template_name(config: TrainConfig, tokenizer: Any) -> str:
    from .templates import ALPACA_CHAT_TEMPLATE

    if config.chat_template_path:
        return config.chat_template_path
    return "alpaca" if tokenizer.chat_template == ALPACA_CHAT_TEMPLATE else "chat_template"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@contextlib.contextmanager
def _removed_on_failure(folder: Path, unless: Callable[[], bool]) -> Iterator[None]:
    """Remove ``folder`` if it did not exist and setup fails before ``unless()`` is true (TRL's Trainer
    creates its output folder when built, before the data is known to be usable)."""
    existed = folder.exists()
    try:
        yield
    except (TrainingConfigError, TrainingDataError):
        if not existed and not unless():
            shutil.rmtree(folder, ignore_errors=True)
        raise
