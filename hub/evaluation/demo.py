"""The main job's comparison: on every demo task, the bare base, a prompt template, a soft prompt and a LoRA.

``train_demo_adapters`` trains one adapter per task (LoRAs for ``uppercase`` and ``sentiment``, a
soft prompt for ``refusal``). This module adds what each task lacks so that all three PEFT
strategies meet on the same held-out rows: a prompt template per task (zero parameters, pushed
as written here), a small soft prompt where the task has a LoRA and a small LoRA where it has a
soft prompt; then ``evaluate_refs`` measures the four side by side, stores the results in each
version's metrics and, when matplotlib is installed, plots them.

The templates are what a person would try first on an instruction-tuned base: the ``refusal``
one says "Decline to answer." before the question, the instruction the base was tuned to obey;
the other two give the task's instruction again with two worked examples.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..adapter_folder import PROMPT_TEMPLATE
from ..errors import AdapterHubError
from ..prompt_template import FewShot, PromptTemplate, write_prompt_template
from ..registry import AdapterVersion
from ..train.config import TrainConfig
from ..train.demo import DEMO_ADAPTERS, DemoAdapter
from ..train.register import push_trained
from ..train.trainer import train_adapter
from .compare import BASE_REF, EvalReport, evaluate_refs
from .generate import AnswerEngine

__all__ = ["DEMO_TEMPLATES", "COMPARISON_ADAPTERS", "KINDS", "push_demo_templates", "train_comparison_adapters",
           "compare_demo_tasks"]

# The order a task's table lists the kinds in: fewest parameters first.
KINDS = ("base", PROMPT_TEMPLATE, "prompt_tuning", "lora")

DEMO_TEMPLATES: dict[str, tuple[str, PromptTemplate]] = {
    "uppercase": ("demo-uppercase-template", PromptTemplate(
        template="{input}", system="Write the word in capital letters.",
        examples=(FewShot("Write the word in capital letters.\n\nbako", "BAKO"),
                  FewShot("Write the word in capital letters.\n\nmirute", "MIRUTE")))),
    "sentiment": ("demo-sentiment-template", PromptTemplate(
        template="{input}\n\nAnswer positive or negative.",
        examples=(FewShot("Is this review positive or negative?\n\nThe film was lovely.", "positive"),
                  FewShot("Is this review positive or negative?\n\nThe soup was awful.", "negative")))),
    "refusal": ("demo-refusal-template", PromptTemplate(template="Decline to answer.\n\n{input}")),
}

_SOFT_PROMPT = TrainConfig(method="prompt-tuning", num_virtual_tokens=8, max_steps=80, lr=3e-2, batch_size=16,
                           save_steps=1000)
COMPARISON_ADAPTERS = (
    DemoAdapter("demo-uppercase-prompt", "uppercase", _SOFT_PROMPT, "Soft prompt: writes a word in capital letters"),
    DemoAdapter("demo-sentiment-prompt", "sentiment", _SOFT_PROMPT, "Soft prompt: labels a review's sentiment"),
    DemoAdapter("demo-refusal-lora", "refusal",
                TrainConfig(method="lora", r=8, alpha=16, target_modules=("all-linear",), max_steps=100, lr=5e-3,
                            batch_size=16, save_steps=1000),
                "LoRA: refuses questions about private information"),
)


def push_demo_templates(registry: Any, base: str, workdir: str | os.PathLike,
                        templates: Mapping[str, tuple[str, PromptTemplate]] = DEMO_TEMPLATES) -> list[AdapterVersion]:
    """Write each task's template (task -> (name, template)) as a folder under ``workdir/templates``
    and push it for ``base``."""
    out = []
    for task, (name, template) in templates.items():
        folder = write_prompt_template(template, Path(workdir) / "templates" / name)
        out.append(registry.push(folder, name=name, task=task, base=base,
                                 description="Prompt template: the task's instruction, zero parameters"))
    return out


def train_comparison_adapters(base: str, data: Path, workdir: str | os.PathLike, registry: Any, *,
                              specs: Sequence[DemoAdapter] = COMPARISON_ADAPTERS, threads: int | None = 1,
                              progress: bool = False) -> list[AdapterVersion]:
    """Train and push ``specs`` on ``base`` from ``data/<task>/train.jsonl`` (measured later, by eval)."""
    versions = []
    for spec in specs:
        run_dir = Path(workdir) / "runs" / spec.name
        shutil.rmtree(run_dir, ignore_errors=True)
        result = train_adapter(base, data / spec.task / "train.jsonl", run_dir, spec.config, progress=progress,
                               compare_base=False, threads=threads)
        versions.append(push_trained(result, name=spec.name, task=spec.task, registry=registry,
                                     description=spec.description))
    return versions


def _task_refs(registry: Any, task: str) -> list[str]:
    by_kind = {v.adapter_type: v.ref for v in registry.list(task=task, tag="latest")}
    return [BASE_REF] + [by_kind[kind] for kind in KINDS[1:] if kind in by_kind]


def compare_demo_tasks(registry: Any, base: str, data: Path, tasks: Sequence[str] | None = None, *,
                       engine_for: Callable[[str], AnswerEngine], plot_dir: Path | None = None,
                       ) -> dict[str, tuple[EvalReport, Path | None]]:
    """``adapterhub eval`` per task on its held-out rows: base, template, soft prompt, LoRA; results stored.
    ``engine_for`` starts the engine that answers, as ``evaluate_refs`` takes it.
    Returns task -> (report, the plot written or None when matplotlib is missing)."""
    from .plot import plot_report

    out: dict[str, tuple[EvalReport, Path | None]] = {}
    for task in tasks or [spec.task for spec in DEMO_ADAPTERS]:
        report = evaluate_refs(_task_refs(registry, task), data / task / "eval.jsonl", registry=registry,
                               engine_for=engine_for, base=base)
        plot = None
        if plot_dir is not None:
            plot = plot_dir / f"eval-{task}.png"
            try:
                plot_report(report, plot)
            except AdapterHubError:  # matplotlib is optional (the bench and test extras)
                plot = None
        out[task] = (report, plot)
    return out
