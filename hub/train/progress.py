"""Trainer callbacks: a progress bar with loss and tokens/s, and the stop-on-signal checkpoint."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from .checkpoint import StopOnSignal

__all__ = ["ProgressBar", "SaveAndStopOnSignal", "Throughput"]


class Throughput(TrainerCallback):
    """Non-padding tokens per second over this session's steps (a resumed run counts only its own)."""

    def __init__(self) -> None:
        self.start_time = 0.0
        self.start_tokens = 0
        self.start_step = 0
        self.tokens = 0
        self.seconds = 0.0

    def on_train_begin(self, args, state, control, **kw: Any) -> None:
        self.start_time = time.perf_counter()
        self.start_tokens = state.num_input_tokens_seen
        self.start_step = state.global_step

    def on_step_end(self, args, state, control, **kw: Any) -> None:
        self.tokens = state.num_input_tokens_seen - self.start_tokens
        self.seconds = time.perf_counter() - self.start_time

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class ProgressBar(TrainerCallback):
    """A tqdm bar on stderr: step, latest loss, tokens/s."""

    def __init__(self, throughput: Throughput, description: str = "train") -> None:
        self.throughput = throughput
        self.description = description
        self.bar = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kw: Any) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.description, unit="step",
                        dynamic_ncols=True)

    def on_log(self, args, state, control, logs=None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kw: Any) -> None:
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        postfix = {"tok/s": f"{self.throughput.tokens_per_s:.0f}"}
        if self.loss is not None:
            postfix["loss"] = f"{self.loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)

    def on_train_end(self, args, state, control, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SaveAndStopOnSignal(TrainerCallback):
    """After the step during which SIGINT/SIGTERM arrived: write a checkpoint and stop training."""

    def __init__(self, flag: StopOnSignal) -> None:
        self.flag = flag

    def on_step_end(self, args, state, control, **kw: Any) -> None:
        if self.flag.requested:
            control.should_save = True
            control.should_training_stop = True
