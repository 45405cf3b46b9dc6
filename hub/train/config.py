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

__all__ = ["METHODS", "TrainConfig"]

METHODS = ("lora", "qlora", "prompt-tuning")


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
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise TrainingConfigError(f"max_steps must be 0 or more, not {self.max_steps!r}")
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
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
