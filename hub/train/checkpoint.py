"""Resumable training: where checkpoints live, and a clean stop on Ctrl-C or SIGTERM.

The Trainer writes ``checkpoints/checkpoint-<step>/`` (adapter weights, optimiser, scheduler, RNG
states) every ``save_steps`` steps, so a SIGKILL loses at most that many steps. SIGINT and SIGTERM
are caught: the current step finishes, a checkpoint is written, and ``train_adapter`` raises
``TrainingInterrupted`` naming it. ``--resume`` continues from the newest complete checkpoint with
the settings recorded in ``train_config.json``: only the run length (``max_steps``, ``epochs``)
and the checkpoint spacing may change, to extend a run; other differences are refused.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

from ..errors import TrainingConfigError
from .config import TrainConfig

__all__ = ["CHECKPOINTS", "CONFIG_FILE", "StopOnSignal", "catch_stop_signals", "last_checkpoint", "prepare_output",
           "run_record"]

CHECKPOINTS = "checkpoints"
CONFIG_FILE = "train_config.json"
_STATE = "trainer_state.json"
_MAY_CHANGE_ON_RESUME = {"max_steps", "epochs", "save_steps", "eval_batch_size", "eval_steps", "report_to"}


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing (its state file is written last)."""
    root = output_dir / CHECKPOINTS
    done = [p for p in root.glob("checkpoint-*") if (p / _STATE).is_file() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def prepare_output(output_dir: Path, run: dict[str, Any], resume: bool) -> Path | None:
    """Check the output folder fits the request; return the checkpoint to resume from, if any.

    A fresh run refuses a folder that already holds checkpoints (nothing is overwritten); a resumed
    run refuses settings that differ from the recorded ones (the optimiser state would not match).
    """
    config_file = output_dir / CONFIG_FILE
    checkpoint = last_checkpoint(output_dir)
    if not resume:
        if checkpoint is not None or config_file.exists():
            raise TrainingConfigError(
                f"{output_dir} already holds a training run; pass --resume to continue it or choose another --output"
            )
    else:
        if not config_file.is_file():
            raise TrainingConfigError(f"{output_dir}: nothing to resume (no {CONFIG_FILE})")
        changed = _changed_settings(json.loads(config_file.read_text()), run)
        if changed:
            raise TrainingConfigError(
                f"cannot resume {output_dir}: settings differ from the recorded run ({', '.join(changed)})"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    return checkpoint


def _changed_settings(recorded: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Settings that differ, except the run length and checkpoint spacing (a run may be extended)."""
    flat = lambda r: {**{k: v for k, v in r.items() if k != "config"}, **r.get("config", {})}  # noqa: E731
    old, new = flat(recorded), flat(run)
    return sorted(k for k in set(old) | set(new) if k not in _MAY_CHANGE_ON_RESUME and old.get(k) != new.get(k))


def run_record(config: TrainConfig, base: str, data_digest: str) -> dict[str, Any]:
    """What identifies a run for resuming: settings, base and data."""
    return {"config": config.to_dict(), "base": base, "data_sha256": data_digest}


class StopOnSignal:
    """A flag set by a signal handler and read by the Trainer callback between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[StopOnSignal]:
    """Route SIGINT/SIGTERM to a flag for the duration (main thread only; elsewhere, a no-op flag)."""
    flag = StopOnSignal()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
