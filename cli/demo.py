"""``adapterhub demo``: the main job on the embedded tiny base, end to end, with no downloads.

The field's order on a model small enough for a 2-core CPU: build the tiny base (the pre-trained
stand-in), instruction-tune it, train two LoRA adapters and a soft prompt on the demo instruction
data, push them with their metrics, and push a prompt template per task (the zero-parameter
adapter) with a soft prompt or LoRA for each task that lacks one; pull and verify them, fold one
LoRA into a standalone model (checked against PEFT), then serve the base quantized as ``serve``
does by default (bf16 on a CPU, nf4 on a GPU) with every adapter at once and send one request per adapter in the same moment: each is answered
by its own adapter. Last, ``adapterhub eval`` per task: the bare base, the prompt template, the
soft prompt and the LoRA on the same held-out rows, stored in the registry (and plotted when
matplotlib is installed). Everything happens under one work folder (a temporary one unless
``--workdir`` is given), so the checkout stays clean.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from .output import render_table

__all__ = ["COMMANDS"]


def _step(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


def _chat(url: str, model: str, content: str) -> str:
    """One OpenAI chat completion over plain HTTP (what any client would send)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 96,
            "temperature": 0}
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.load(resp)["choices"][0]["message"]["content"]


def _first_eval_row(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.loads(f.readline())


def _prompt_of(row: dict[str, Any]) -> str:
    extra = row.get("input") or ""
    return row["instruction"] + ("\n\n" + extra if extra.strip() else "")


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the base, data, adapters and registry here (default: a temporary folder, removed after).")
@click.option("--quantize", type=click.Choice(["auto", "bf16", "nf4", "int8", "none"]), default="auto", show_default=True,
              help="How the served base is quantized (auto: as adapterhub serve, bf16 on a CPU, nf4 on a GPU).")
def demo(workdir, quantize):
    """Run the main job on the embedded tiny base model (no network needed)."""
    from adapterhub.merge.pipeline import merge_model
    from adapterhub.merge.plan import MergeOptions
    from adapterhub.registry import LocalRegistry
    from adapterhub.tinybase import build_tiny_base
    from adapterhub.train.demo import train_demo_adapters
    from adapterhub.api import start_engine
    from adapterhub.evaluation.demo import compare_demo_tasks, push_demo_templates, train_comparison_adapters

    started = time.perf_counter()
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="adapterhub-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        _step("build the tiny base model (the pre-trained stand-in)")
        base = build_tiny_base(work / "tiny-llama", force=True)
        click.echo(f"base: {base}")

        _step("instruction-tune the base, then train two LoRA adapters and a soft prompt; push them")
        click.echo("(about three minutes on two CPU cores)")
        registry = LocalRegistry(work / "registry")
        versions = train_demo_adapters(base, work, registry, progress=sys.stderr.isatty())
        instruct_base = versions[0].base["name"]
        rows = [(v.name, v.version, v.adapter_type, v.task,
                 f"{v.metrics.get('eval_exact_match', float('nan')):.0%}",
                 f"{v.metrics.get('base_eval_exact_match', float('nan')):.0%}", v.digest[:12])
                for v in registry.list()]
        click.echo(render_table(("NAME", "VER", "TYPE", "TASK", "EXACT MATCH", "BASE ALONE", "DIGEST"), rows))

        _step("push a prompt template per task (zero parameters); add a soft prompt or LoRA where a task lacks one")
        versions += push_demo_templates(registry, instruct_base, work)
        versions += train_comparison_adapters(instruct_base, work / "data", work, registry,
                                              progress=sys.stderr.isatty())

        _step("pull every adapter back and verify the registry")
        for v in versions:
            registry.pull(v.ref, work / "pulled" / v.name)
            click.echo(f"pulled {v.ref} -> {work / 'pulled' / v.name} (digests verified)")
        report = registry.verify()
        click.echo(f"verify: {'ok' if report.ok else report.problems} "
                   f"({report.checked_versions} versions, {report.checked_objects} objects)")

        lora = next(v for v in versions if v.adapter_type == "lora")
        _step(f"fold {lora.name} into a standalone model and check it against PEFT")
        merged = merge_model([str(work / "pulled" / lora.name)], instruct_base, work / "merged",
                             MergeOptions(), verify=True)
        click.echo(f"merged model: {merged.out} ({merged.edited_tensors} tensors edited); "
                   f"max |logit difference| vs PEFT: {merged.verify.max_abs_diff:.2e}")

        _step(f"serve the base ({quantize}) with every adapter at once; one request per adapter, concurrently")
        data = work / "data"
        asks = [(v.name, _first_eval_row(data / v.task / "eval.jsonl")) for v in versions]
        asks.append(("base", asks[0][1]))
        with start_engine(instruct_base, registry=registry, quantize=quantize, http=True) as server:
            click.echo(f"OpenAI-compatible API at {server.url}/v1")
            with ThreadPoolExecutor(len(asks)) as pool:
                answers = list(pool.map(
                    lambda a: _chat(server.url, server.base if a[0] == "base" else a[0], _prompt_of(a[1])), asks))
        table = [(model, _prompt_of(row).replace("\n", " ")[:56], answer.strip()[:64],
                  "yes" if answer.strip() == row["output"].strip() else "no")
                 for (model, row), answer in zip(asks, answers)]
        click.echo(render_table(("MODEL", "PROMPT", "ANSWER", "= REFERENCE"), table))

        _step("adapterhub eval per task: bare base, prompt template, soft prompt and LoRA on the held-out rows")
        compared = compare_demo_tasks(registry, instruct_base, data, plot_dir=work if workdir else None)
        for task, (report, plot) in compared.items():
            click.echo(f"task {task} ({report.rows} rows of {data / task / 'eval.jsonl'})")
            click.echo(render_table(("REF", "TYPE", "EXACT MATCH", "ROUGE-L"), [
                (s.ref, s.adapter_type, f"{s.exact_match:.1%}", f"{s.rouge_l:.3f}") for s in report.scores]))
            click.echo(f"stored in each version's metrics as eval.{report.data_sha256.removeprefix('sha256:')[:12]}..."
                       + (f"; plot: {plot}" if plot else "") + "\n")
        click.echo(f"done in {time.perf_counter() - started:.0f} s")
    finally:
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)


COMMANDS = [demo]
