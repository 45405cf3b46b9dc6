"""``adapterhub data``: convert, generate (Self-Instruct) and curate instruction data (JSONL in, JSONL out)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import click

from .output import emit_json, json_option

__all__ = ["COMMANDS"]


def _write_jsonl(rows: Iterable[dict[str, Any]], out: str | None) -> int:
    """Rows to ``out`` (written beside it and renamed into place) or stdout; returns how many."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    if out is None:
        sys.stdout.write("".join(lines))
        return len(lines)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.partial")
    staged.write_text("".join(lines), encoding="utf-8")
    os.replace(staged, target)
    return len(lines)


@click.group("data")
def data() -> None:
    """Convert, generate (Self-Instruct) and curate instruction data."""


@data.command("convert")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--to", "to", type=click.Choice(["alpaca", "messages", "sharegpt", "prompt-completion"]),
              default="alpaca", show_default=True, help="Shape of the rows written.")
@click.option("--out", type=click.Path(dir_okay=False), help="Output JSONL (default: stdout).")
@click.option("--k-shot", type=int, default=0, show_default=True,
              help="Natural Instructions: positive examples shown as few-shot before each instance.")
@click.option("--templates", type=click.Path(dir_okay=False),
              help="FLAN-style: a JSON list of templates with {definition}, {examples}, {input}; one per row.")
@click.option("--max-instances", type=int, default=0, help="Natural Instructions: rows per task (0: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Which phrasing and template each row gets.")
def convert(inputs, to, out, k_shot, templates, max_instances, seed):
    """Natural Instructions task files (.json) and rows of any trainable shape (.jsonl) into one JSONL file.

    A task's Definition is the instruction (followed by --k-shot positive examples), each instance a
    row. With several phrasings or --templates, rows get a seeded mix of them (FLAN-style).
    """
    from adapterhub.data.convert import convert_file, load_templates
    from adapterhub.errors import TrainingDataError

    if k_shot < 0 or max_instances < 0:
        raise TrainingDataError("--k-shot and --max-instances must be 0 or more")
    chosen = load_templates(templates) if templates else ()
    rows = [row for path in inputs for row in convert_file(path, to, k_shot=k_shot, templates=chosen, seed=seed,
                                                           max_instances=max_instances)]
    n = _write_jsonl(rows, out)
    if out is not None:
        click.echo(f"wrote {n} row(s) to {out}", err=True)


@data.command("self-instruct")
@click.option("--seeds", required=True, type=click.Path(dir_okay=False), help="Seed tasks (JSONL).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output JSONL; an existing file is resumed (its rows count toward --rows).")
@click.option("--rows", "n_rows", type=int, required=True, help="Rows the output should hold.")
@click.option("--base-url", required=True, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1.")
@click.option("--model", required=True, help="Model name at the endpoint (for adapterhub serve: base or adapter).")
@click.option("--api-key", envvar="OPENAI_API_KEY", default=None, help="Bearer key (default: $OPENAI_API_KEY).")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Requests in flight.")
@click.option("--similarity", type=float, default=0.7, show_default=True,
              help="Drop an instruction whose ROUGE-L to a kept one exceeds this.")
@click.option("--min-words", type=int, default=3, show_default=True)
@click.option("--max-words", type=int, default=150, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--max-requests", type=int, default=0, help="Give up after this many requests (0: 20 per row).")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def self_instruct(seeds, out, n_rows, base_url, model, api_key, concurrency, similarity, min_words, max_words,
                  temperature, max_tokens, max_requests, seed, json_output):
    """Generate instruction rows from seed tasks with a model (Self-Instruct, ROUGE-L < 0.7 filter)."""
    from adapterhub.data.openai_client import ChatClient
    from adapterhub.data.self_instruct import SelfInstructConfig, run_self_instruct

    config = SelfInstructConfig(rows=n_rows, concurrency=concurrency, similarity=similarity, min_words=min_words,
                                max_words=max_words, temperature=temperature, max_tokens=max_tokens, seed=seed,
                                max_requests=max_requests)
    client = ChatClient(base_url, model, api_key)
    show = None if json_output else (lambda row: click.echo(f"+ {row['instruction'][:100]}", err=True))
    report = run_self_instruct(seeds, out, client, config, on_row=show)
    if json_output:
        emit_json({"rows": report.rows, "resumed": report.resumed, "requests": report.requests,
                   "dropped": dict(report.dropped), "out": str(out)})
        return
    click.echo(f"{out}: {report.rows} row(s) ({report.resumed} from before), {report.requests} request(s)")
    for reason, count in report.dropped.most_common():
        click.echo(f"  dropped {count}: {reason}")
    if report.rows < n_rows:
        raise click.ClickException(f"only {report.rows} of {n_rows} rows after {report.requests} requests "
                                   "(raise --max-requests, or loosen --min-words/--similarity)")


@data.command("curate")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Output JSONL (default: stdout).")
@click.option("--near-duplicate", type=float, default=0.9, show_default=True,
              help="Drop a row whose prompt ROUGE-L to a kept prompt exceeds this.")
@click.option("--min-words", type=int, default=1, show_default=True, help="Shortest response kept (words).")
@click.option("--max-words", type=int, default=0, show_default=True, help="Longest response kept (0: no bound).")
@click.option("--per-source", type=int, default=0, show_default=True,
              help="At most N rows per source (the row's \"source\" field, else its file); 0: no quota.")
@click.option("--sample", type=int, default=0, show_default=True, help="Keep a seeded sample of N rows (0: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def curate(inputs, out, near_duplicate, min_words, max_words, per_source, sample, seed, json_output):
    """LIMA-style: drop exact and near duplicates, bound lengths, cap sources, sample; print what was dropped."""
    from adapterhub.data.curate import CurateConfig, CuratedRow, curate_rows, source_of
    from adapterhub.train.data import read_jsonl

    rows = [CuratedRow(row, source_of(row, path), where) for path in inputs for row, where in read_jsonl(path)]
    kept, report = curate_rows(rows, CurateConfig(near_duplicate=near_duplicate, min_words=min_words,
                                                  max_words=max_words, per_source=per_source, sample=sample,
                                                  seed=seed))
    _write_jsonl((r.row for r in kept), out)
    summary = {"read": report.read, "kept": report.kept, "dropped": dict(report.dropped),
               "first_dropped": report.examples}
    if json_output:
        emit_json(summary)
        return
    click.echo(f"read {report.read} row(s), kept {report.kept}", err=True)
    for reason, count in report.dropped.most_common():
        click.echo(f"  dropped {count}: {reason} (first: {report.examples[reason]})", err=True)


COMMANDS = [data]
