"""``adapterhub merge``: fold adapters into a standalone model, or combine them into a new adapter."""

from __future__ import annotations

import click

from .output import emit_json, json_option, quiet_ml_libraries, registry_option

__all__ = ["COMMANDS"]

_METHODS = ("linear", "cat", "ties", "dare_linear", "dare_ties")
_DTYPES = ("fp32", "bf16", "fp16")


def _parse_weights(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(w) for w in value.split(","))
    except ValueError:
        raise click.ClickException(f"--weights {value!r}: expected comma-separated numbers, e.g. 0.7,0.3") from None


def _parse_size(value: str | None) -> int | None:
    if value is None:
        return None
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    text = value.strip().upper()
    for unit, factor in units.items():
        if text.endswith(unit):
            text, mult = text[: -len(unit)], factor
            break
    else:
        mult = 1
    try:
        return int(float(text) * mult)
    except ValueError:
        raise click.ClickException(f"--max-shard-size {value!r}: expected a size such as 2GB or 500MB") from None


@click.command("merge")
@click.argument("refs", nargs=-1, required=True, metavar="REF [REF ...]")
@click.option("--base", required=True, help="Base model folder, .gguf file or Hub id the adapters belong to.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Folder for the merged model.")
@click.option("--weights", help="One weight per adapter, comma-separated (default 1 each).")
@click.option("--method", default="linear", show_default=True, help=f"One of {', '.join(_METHODS)}.")
@click.option("--density", type=float, help="Fraction of delta entries kept (ties, dare_*).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of DARE's random drop.")
@click.option("--dtype", help=f"Output dtype: {', '.join(_DTYPES)} (default: the base's).")
@click.option("--max-shard-size", help="Output shard budget, e.g. 2GB (default: the base's largest shard).")
@click.option("--verify", is_flag=True, help="Compare logits with PEFT's own result before writing (fp32: within 1e-4 times the largest logit).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--as-adapter", is_flag=True, help="Write the combination to the registry as a new LoRA adapter.")
@click.option("--rank", type=int, help="Rank of the --as-adapter result (truncated SVD; not for cat).")
@click.option("--name", help="Registry name of the --as-adapter result.")
@click.option("--task", help="Task recorded for the --as-adapter result (default: the sources').")
@registry_option
@json_option
def merge(refs, base, out, weights, method, density, seed, dtype, max_shard_size, verify, force, as_adapter, rank,
          name, task, registry, json_output):
    """Fold LoRA adapters (registry REFs or adapter folders) into BASE and write a standalone model.

    Several adapters are combined by --method with --weights. With --as-adapter the combination is
    pushed to the registry as a new adapter instead (lineage recorded), and no model is written.
    """
    quiet_ml_libraries()
    from adapterhub.merge import MergeOptions, merge_adapter, merge_model

    if as_adapter:
        if not name:
            raise click.ClickException("--as-adapter needs --name")
        if out or verify or force:
            raise click.ClickException("--as-adapter writes to the registry: --out, --verify and --force do not apply")
    else:
        if not out:
            raise click.ClickException("--out is required (or use --as-adapter)")
        if rank is not None or name or task:
            raise click.ClickException("--rank, --name and --task apply only with --as-adapter")
    options = MergeOptions(method=method, weights=_parse_weights(weights), density=density, seed=seed, dtype=dtype,
                           max_shard_bytes=_parse_size(max_shard_size))
    if as_adapter:
        result = merge_adapter(list(refs), base, options, name=name, rank=rank, task=task, registry=registry)
    else:
        result = merge_model(list(refs), base, out, options, registry=registry, force=force, verify=verify)
    if json_output:
        emit_json(result.to_dict())
        return
    sources = ", ".join(f"{a['ref']} x{a['weight']:g}" for a in result.adapters)
    if as_adapter:
        click.echo(f"pushed {result.registry_ref}: {method} of {sources} (rank {result.adapter['rank']}, "
                   f"max relative error {result.adapter['max_relative_error']:.2g})")
        return
    click.echo(f"merged {sources} into {base} -> {result.out} ({result.edited_tensors} tensors changed, "
               f"{len(result.files)} weight file(s), {result.seconds:.1f} s)")
    if result.untied_embeddings:
        click.echo("input/output embeddings untied (the merge changed one side only)")
    if result.verify:
        click.echo(f"verified against {result.verify.reference}: max |logits difference| "
                   f"{result.verify.max_abs_diff:.3g} over {result.verify.prompts} prompts")


COMMANDS = [merge]
