"""``adapterhub eval``: registry versions and the bare base compared on one data file."""

from __future__ import annotations

import click

from adapterhub.evaluation.compare import EVAL_QUANTIZE

from .output import emit_json, json_option, registry_option, render_table

__all__ = ["COMMANDS"]


@click.command("eval")
@click.argument("refs", nargs=-1)
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Rows to evaluate on (JSONL).")
@click.option("--base", default=None, help="Base model (default: the adapters' base; needed for `base` alone).")
@click.option("--base-only", is_flag=True, help="Evaluate only the bare base (with --base); no REFs.")
@click.option("--quantize", type=click.Choice(["none", "bf16", "nf4", "int8"]), default=EVAL_QUANTIZE, show_default=True,
              help="How the engine that generates the answers loads the base.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Rows decoded together.")
@click.option("--max-length", type=int, default=512, show_default=True, help="Longest row for the loss (tokens).")
@click.option("--no-store", is_flag=True, help="Do not write the results into the versions' metrics.")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), help="Bar chart of the scores (needs matplotlib).")
@registry_option
@json_option
def eval_cmd(refs, data, base, base_only, quantize, batch_size, max_length, no_store, plot, registry, json_output):
    """Exact match, ROUGE-L, loss and perplexity of each REF on the same rows (REF `base`: the bare base).

    Answers are generated greedily through the serving engine, every adapter in the same batches;
    loss is measured through PEFT. Results go into each version's metrics as
    eval.<sha256 of the data>.<metric>.
    """
    from adapterhub.errors import TrainingConfigError
    from adapterhub.evaluation.compare import BASE_REF, evaluate_refs
    from adapterhub.location import open_registry
    from adapterhub.server.serving import engine_factory

    if base_only == bool(refs):
        raise TrainingConfigError("give adapter REFs (add `base` for the bare base), or --base-only with --base")
    refs = [BASE_REF] if base_only else list(dict.fromkeys(refs))
    store = open_registry(registry)
    engines = engine_factory(store, quantize=quantize, max_batch_size=batch_size)
    report = evaluate_refs(refs, data, registry=store, engine_for=engines, base=base, max_length=max_length,
                           batch_size=batch_size, store=not no_store)
    if plot:
        from adapterhub.evaluation.plot import plot_report

        plot_report(report, plot)
    if json_output:
        emit_json(report.to_dict())
        return
    rows = [(s.ref, s.adapter_type, f"{s.exact_match:.1%}", f"{s.rouge_l:.3f}", f"{s.loss:.4f}", f"{s.perplexity:.2f}")
            for s in report.scores]
    click.echo(f"{report.data} ({report.rows} rows, {report.data_sha256[:19]}...)")
    click.echo(render_table(("REF", "TYPE", "EXACT MATCH", "ROUGE-L", "LOSS", "PERPLEXITY"), rows))
    if not no_store and not base_only:
        click.echo("stored in each version's metrics as eval.<data sha256>.<metric>")
    if plot:
        click.echo(f"plot written to {plot}")


COMMANDS = [eval_cmd]
