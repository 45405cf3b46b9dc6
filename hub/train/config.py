"""Settings of one training run: the adapter's shape and the optimisation, checked before any work.

Everything here is written to ``train_config.json`` in the output folder and stored in the
registry entry on push, so a registered adapter says exactly how it was made. Runtime-only
choices (progress bar, where checkpoints go) are arguments of ``train_adapter``, not fields here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from ..errors import TrainingConfigError

__all__ = ["METHODS", "REPORT_TO", "TRL_NAMES", "TrainConfig"]

METHODS = ("lora", "qlora", "prompt-tuning")
REPORT_TO = ("none", "tensorboard", "trackio")

# TRL's (SFTConfig / TrainingArguments) and PEFT's (LoraConfig) names for our fields: a config file
# written for TRL or PEFT reads the same here.
TRL_NAMES = {
    "learning_rate": "lr",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
}


@dataclass(frozen=True)
class TrainConfig:
    """How to train one adapter.

    Args:
        method: ``lora``, ``qlora`` (LoRA on the base loaded in 4-bit nf4) or ``prompt-tuning``.
        r: LoRA rank.
        alpha: LoRA alpha (the update is scaled by ``alpha / r``).
        dropout: LoRA dropout.
        target_modules: module names to adapt (``q_proj``...) or ``["all-linear"]``; empty means
            PEFT's default for the architecture.
        num_virtual_tokens: soft-prompt length (prompt tuning).
        prompt_init_text: initialise the soft prompt from this text's embeddings (prompt tuning);
            empty means random initialisation.
        epochs: passes over the training data (ignored when ``max_steps`` > 0).
        max_steps: optimiser steps to run; 0 means ``epochs`` decides.
        lr: peak learning rate (linear warm-up over 5% of the steps, then linear decay).
        batch_size: rows per forward pass.
        grad_accum: forward passes per optimiser step.
        max_length: longest training sequence in tokens; longer rows are cut and counted.
        seed: seeds adapter initialisation and data order: same seed, same data, same weights.
        save_steps: write a resumable checkpoint every this many steps.
        eval_batch_size: rows per batch in the final evaluation (loss and greedy generation).
        packing: pack rows into ``max_length`` sequences (TRL's best-fit decreasing), no padding.
        eval_steps: also measure the held-out loss every this many steps (0: only at the end).
        report_to: where TRL logs the run: ``none``, ``tensorboard`` or ``trackio``.
        chat_template_path: a Jinja chat template to train with instead of the base's.
    """

    method: str = field(default="lora", metadata={"help": "lora | qlora | prompt-tuning"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    target_modules: tuple[str, ...] = field(default=(), metadata={"help": "modules to adapt; empty: PEFT default"})
    num_virtual_tokens: int = field(default=16, metadata={"help": "soft-prompt length"})
    prompt_init_text: str = field(default="", metadata={"help": "soft-prompt initialisation text"})
    epochs: float = field(default=3.0, metadata={"help": "passes over the data"})
    max_steps: int = field(default=0, metadata={"help": "optimiser steps; 0: use epochs"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=8, metadata={"help": "rows per forward pass"})
    grad_accum: int = field(default=1, metadata={"help": "forward passes per optimiser step"})
    max_length: int = field(default=512, metadata={"help": "longest sequence in tokens"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every N steps"})
    eval_batch_size: int = field(default=32, metadata={"help": "rows per evaluation batch"})
    packing: bool = field(default=False, metadata={"help": "pack rows into max_length sequences"})
    eval_steps: int = field(default=0, metadata={"help": "held-out loss every N steps; 0: at the end only"})
    report_to: str = field(default="none", metadata={"help": "none | tensorboard | trackio"})
    chat_template_path: str = field(default="", metadata={"help": "Jinja chat template to train with"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TrainingConfigError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        positive_ints = ("r", "num_virtual_tokens", "batch_size", "grad_accum", "max_length", "save_steps",
                         "eval_batch_size")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainingConfigError(f"{name} must be a positive integer, not {value!r}")
        for name in ("max_steps", "eval_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TrainingConfigError(f"{name} must be 0 or more, not {value!r}")
        if self.report_to not in REPORT_TO:
            raise TrainingConfigError(f"report_to {self.report_to!r} is not one of {', '.join(REPORT_TO)}")
        if not isinstance(self.packing, bool):
            raise TrainingConfigError(f"packing must be true or false, not {self.packing!r}")
        for name in ("alpha", "lr", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise TrainingConfigError(f"{name} must be a positive number, not {value!r}")
        if not 0 <= self.dropout < 1:
            raise TrainingConfigError(f"dropout must be in [0, 1), not {self.dropout!r}")
        if any(not m or not isinstance(m, str) for m in self.target_modules):
            raise TrainingConfigError(f"target_modules must be module names, not {list(self.target_modules)!r}")

    @property
    def is_lora(self) -> bool:
        return self.method in ("lora", "qlora")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Our field names or TRL's/PEFT's (``learning_rate``, ``lora_r``...); other keys are ignored."""
        known = {f.name for f in fields(cls)}
        named = {TRL_NAMES.get(k, k): v for k, v in d.items()}
        return cls(**{k: v for k, v in named.items() if k in known})
