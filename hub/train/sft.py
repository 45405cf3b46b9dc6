"""Our settings and rows handed to TRL: ``SFTConfig`` from a ``TrainConfig``, ``SFTTrainer`` over the rows.

TRL does the tokenizing, the label masks, truncation, packing, collation and the loop; this module
decides only what TRL cannot know:

- which loss: chat rows learn every assistant turn (``assistant_only_loss``) under a template that
  marks the assistant's tokens (``templates.training_chat_template``); when the base's template
  has no markers and TRL knows no training version of it, rows with a single assistant turn are
  trained as conversational prompt/completion (TRL's completion-only loss needs no markers) and
  multi-turn rows are refused with a one-line error; ``prompt``/``completion`` rows keep TRL's
  completion-only loss;
- TRL's defaults that differ from a plain Trainer are set back (no gradient checkpointing, no
  bf16 autocast, the model's own loss forward rather than TRL's fused LM head): the loop runs at
  the speed and numerics of the Trainer it replaced;
- QLoRA on CPU: TRL casts the adapter of a 4-bit base to bf16 (the paper's GPU recipe); with fp32
  compute the adapter is put back to fp32 so the saved adapter has the base's compute dtype.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

from ..errors import TrainingConfigError
from .config import TrainConfig
from .data import Example, data_kind
from .templates import ALPACA_CHAT_TEMPLATE, training_chat_template

__all__ = ["check_report_to", "sft_config", "trl_rows", "with_run_template", "build_trainer", "prepared_rows"]

_REPORTER_INSTALL = {"tensorboard": "pip install 'adapterhub[tracking]'", "trackio": "pip install trackio"}


def check_report_to(config: TrainConfig) -> None:
    """Refuse ``--report-to X`` before any work when X's package is not installed (TRL would fail mid-setup)."""
    import importlib.util

    install = _REPORTER_INSTALL.get(config.report_to)
    if install and importlib.util.find_spec(config.report_to) is None:
        raise TrainingConfigError(f"--report-to {config.report_to} needs the {config.report_to} package ({install})")


def sft_config(config: TrainConfig, output_dir: Path, *, kind: str, evaluate: bool, use_cpu: bool) -> Any:
    """TRL's ``SFTConfig`` for one run (``kind``: what ``trl_rows`` decided)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
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
        eval_strategy="steps" if evaluate and config.eval_steps else "no",
        eval_steps=config.eval_steps or None,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[] if config.report_to == "none" else [config.report_to],
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        activation_checkpointing=False,
        bf16=False,
        max_length=config.max_length,
        packing=config.packing,
        eval_packing=False,  # evaluation measures whole rows
        assistant_only_loss=kind == "messages",
    )


def trl_rows(examples: Sequence[Example], tokenizer: Any) -> tuple[list[dict[str, Any]], str, Any]:
    """The rows as TRL trains them, their kind, and the tokenizer to train with (its template set).

    The tokenizer is a copy when its template changes, so the caller's (which may be saved with a
    model) keeps the base's own template.
    """
    kind = data_kind(list(examples))
    rows = [ex.row for ex in examples]
    if kind != "messages":
        return rows, kind, tokenizer
    template = training_chat_template(tokenizer)
    if template is None:
        multi = next((ex for ex in examples if sum(m["role"] == "assistant" for m in ex.row["messages"]) > 1), None)
        if multi is not None:
            raise TrainingConfigError(
                f"{multi.source}: several assistant turns need a chat template with {{% generation %}} markers to "
                "learn each of them, and the base's has none (give one with --chat-template-path FILE.jinja)"
            )
        rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
        return rows, "prompt-completion", tokenizer
    if template != getattr(tokenizer, "chat_template", None):
        tokenizer = copy.copy(tokenizer)
        tokenizer.chat_template = template
    return rows, kind, tokenizer


def _load_chat_template(path: str, tokenizer: Any) -> Any:
    """``--chat-template-path``: a Jinja file replaces the base's template for this run."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingConfigError(f"chat template {path}: cannot read it ({e.__class__.__name__})") from e
    tokenizer = copy.copy(tokenizer)
    tokenizer.chat_template = text
    return tokenizer


def with_run_template(tokenizer: Any, config: TrainConfig) -> Any:
    """The tokenizer with the run's template: ``--chat-template-path``, else the base's, else Alpaca's."""
    if config.chat_template_path:
        return _load_chat_template(config.chat_template_path, tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer = copy.copy(tokenizer)
        tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
    return tokenizer


def _trainer_class() -> type:
    """TRL's SFTTrainer with transformers' own loss forward.

    TRL's default forward (a fused LM head that also computes entropy and token accuracy for its
    logs) made each step about 10% slower on CPU-sized models (bench/train_bench.py); the model's
    own loss over the same TRL-made labels is the loss a plain Trainer computes. ``use_cache`` is
    off as in TRL's forward: without a cache the model sees packed rows apart.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return ModelLossSFTTrainer


def build_trainer(model: Any, tokenizer: Any, examples: Sequence[Example], checkpoint_dir: Path, config: TrainConfig,
                  *, eval_examples: Sequence[Example] | None = None, peft_config: Any = None,
                  use_cpu: bool = True) -> Any:
    """An ``SFTTrainer`` ready to train (its datasets tokenized and masked by TRL)."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()  # TRL's per-stage dataset bars; the training bar is ours
    rows, kind, tokenizer = trl_rows(examples, tokenizer)
    eval_rows = None
    if eval_examples:
        eval_rows, eval_kind, _ = trl_rows(eval_examples, tokenizer)
        if eval_kind != kind:
            raise TrainingConfigError(f"{eval_examples[0].source}: evaluation rows are {eval_kind} rows but the "
                                      f"training rows are {kind} rows")
    args = sft_config(config, checkpoint_dir, kind=kind, evaluate=eval_rows is not None, use_cpu=use_cpu)
    try:
        trainer = _trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                             processing_class=tokenizer, peft_config=peft_config)
    except ValueError as e:
        raise TrainingConfigError(f"cannot set up training: {str(e).splitlines()[0]}") from e
    if len(trainer.train_dataset) == 0:
        raise TrainingConfigError(f"{examples[0].source.rsplit(':', 1)[0]}: no row keeps a response token "
                                  f"within max_length={config.max_length}")
    if config.method == "qlora":
        _adapter_to_compute_dtype(trainer.model)
    return trainer


def _adapter_to_compute_dtype(model: Any) -> None:
    """Give the trainable adapter weights the dtype the 4-bit layers compute in (fp32 on CPU)."""
    import torch

    from .qlora import compute_dtype

    dtype = compute_dtype("cuda" if next(model.parameters()).is_cuda else "cpu")
    if dtype == torch.float32:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(dtype)


def prepared_rows(model: Any, tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[dict[str, Any]]:
    """The rows as TRL would train on them (``input_ids``, ``labels``): what evaluation measures loss on."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="adapterhub-prepare-") as tmp:
        trainer = build_trainer(model, tokenizer, examples, Path(tmp), TrainConfig(max_length=max_length),
                                use_cpu=next(model.parameters()).device.type == "cpu")
        return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in trainer.train_dataset]
