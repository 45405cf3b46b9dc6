"""``adapterhub demo``: the main job on the embedded tiny base, end to end, with no downloads.

It builds the tiny base, makes a LoRA and a soft-prompt adapter for it with PEFT, pushes both to a
private registry, lists, pulls and verifies them, and checks that PEFT loads the pulled folders
with logits identical to the originals. Everything happens under one work folder (a temporary one
unless ``--workdir`` is given), so the checkout stays clean.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import click

from .output import render_table

__all__ = ["COMMANDS"]


def _step(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the base, adapters and registry here (default: a temporary folder, removed after).")
def demo(workdir):
    """Run the main job on the embedded tiny base model (no network needed)."""
    import torch
    from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hub.registry import LocalRegistry
    from hub.tinybase import build_tiny_base

    started = time.perf_counter()
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="adapterhub-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        _step("build the tiny base model")
        base = build_tiny_base(work / "tiny-llama", force=True)
        click.echo(f"base: {base}")

        _step("make a LoRA and a soft-prompt adapter with PEFT")
        torch.manual_seed(0)
        adapters = {
            "greeter": (LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear",
                                   init_lora_weights=False), "greetings"),
            "styler": (PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8), "style"),
        }
        for name, (config, _) in adapters.items():
            get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(work / "made" / name)
            click.echo(f"saved {work / 'made' / name}")

        _step("push, list, pull, verify")
        registry = LocalRegistry(work / "registry")
        for name, (_, task) in adapters.items():
            v = registry.push(work / "made" / name, name=name, task=task, tags=["demo"])
            click.echo(f"pushed {v.ref} sha256:{v.digest[:12]}")
        rows = [(v.name, v.version, ",".join(v.tags), v.adapter_type, v.task, v.total_size)
                for v in registry.list()]
        click.echo(render_table(("NAME", "VER", "TAGS", "TYPE", "TASK", "BYTES"), rows))
        tokenizer = AutoTokenizer.from_pretrained(base)
        prompt = tokenizer("hello adapters", return_tensors="pt")
        for name in adapters:
            pulled = registry.pull(f"{name}:demo", work / "pulled" / name)
            logits = []
            for folder in (work / "made" / name, work / "pulled" / name):
                model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder).eval()
                with torch.no_grad():
                    logits.append(model(**prompt).logits)
            same = torch.equal(logits[0], logits[1])
            click.echo(f"pulled {pulled.ref}: PEFT logits identical to the original: {same}")
            if not same:
                raise click.ClickException(f"pulled {pulled.ref} differs from what was pushed")
        report = registry.verify()
        click.echo(f"verify: {'ok' if report.ok else report.problems} "
                   f"({report.checked_versions} versions, {report.checked_objects} objects)")
        click.echo(f"\ndone in {time.perf_counter() - started:.1f} s")
    finally:
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)


COMMANDS = [demo]
