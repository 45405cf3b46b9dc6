"""The main job's training half: instruction-tune the tiny base, train the demo adapters, push them.

``train_demo_adapters`` runs the field's order on the tiny base (pre-trained = built, then
instruction-tuned here, then adapted) with settings sized for a 2-core CPU, and pushes:

- ``demo-uppercase``: LoRA (all linear layers) that writes a word in capitals;
- ``demo-sentiment``: LoRA that answers ``positive`` or ``negative`` for a short review;
- ``demo-refusal``: a soft prompt that makes the instruction-tuned base refuse questions about a
  person's private data, which it otherwise does only when told to ("Decline to answer.").

Every entry records its held-out metrics, including the bare base's (``base_eval_exact_match``).
Adapters are trained on the *instruction-tuned* base (``<workdir>/instruct-base``): serve them on
that folder; each returned version names it as ``version.base["name"]``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datasets.demo import write_demo_datasets
from ..registry import AdapterVersion
from .config import TrainConfig
from .register import push_trained
from .trainer import train_adapter

__all__ = ["DEMO_ADAPTERS", "DemoAdapter", "INSTRUCT_BASE_DIR", "train_demo_adapters"]

log = logging.getLogger(__name__)

INSTRUCT_BASE_DIR = "instruct-base"


@dataclass(frozen=True)
class DemoAdapter:
    name: str
    task: str
    config: TrainConfig
    description: str


DEMO_ADAPTERS = (
    DemoAdapter("demo-uppercase", "uppercase",
                TrainConfig(method="lora", r=16, alpha=32, target_modules=("all-linear",), max_steps=200, lr=5e-3,
                            batch_size=16, save_steps=1000),
                "LoRA: writes a word in capital letters"),
    DemoAdapter("demo-sentiment", "sentiment",
                TrainConfig(method="lora", r=8, alpha=16, target_modules=("all-linear",), max_steps=250, lr=6e-3,
                            batch_size=16, save_steps=1000),
                "LoRA: labels a short review positive or negative"),
    DemoAdapter("demo-refusal", "refusal",
                TrainConfig(method="prompt-tuning", num_virtual_tokens=8, max_steps=80, lr=3e-2, batch_size=16,
                            save_steps=1000),
                "Soft prompt: refuses questions about private information"),
)

INSTRUCT_STEPS = 400


def train_demo_adapters(base_dir: str | os.PathLike, workdir: str | os.PathLike, registry: Any = None, *,
                        threads: int | None = 1, progress: bool = True) -> list[AdapterVersion]:
    """Instruction-tune ``base_dir`` into ``workdir/instruct-base``, train the three demo adapters on
    it from data generated into ``workdir/data``, push them to ``registry`` and return the versions.

    ``threads=1`` by default: on a small shared machine one thread per process is faster than
    torch's default of one per core (which oversubscribes when others are busy).
    """
    from ..instruct_base import instruct_tune_base

    work = Path(workdir)
    data = write_demo_datasets(work / "data")
    started = time.perf_counter()
    base = instruct_tune_base(base_dir, work / INSTRUCT_BASE_DIR, data["instruct"].train, max_steps=INSTRUCT_STEPS,
                              threads=threads, progress=progress)
    log.info("instruction-tuned base in %.0f s", time.perf_counter() - started)
    versions = []
    for spec in DEMO_ADAPTERS:
        run_dir = work / "runs" / spec.name
        shutil.rmtree(run_dir, ignore_errors=True)  # the demo's own scratch: a rerun starts over
        result = train_adapter(str(base), data[spec.task].train, run_dir, spec.config,
                               eval_file=data[spec.task].eval, progress=progress, threads=threads)
        versions.append(push_trained(result, name=spec.name, task=spec.task, registry=registry,
                                     description=spec.description))
    return versions
