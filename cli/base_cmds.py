"""``adapterhub base ...``: the embedded tiny default base model."""

from __future__ import annotations

import click

from .output import emit_json, json_option

__all__ = ["COMMANDS"]


@click.group()
def base() -> None:
    """Base models: build the embedded tiny default."""


@base.command("build-tiny")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Initialisation seed (same seed, same bytes).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@json_option
def build_tiny(out_dir, seed, force, json_output):
    """Write the tiny Llama base model (HF format, byte-level tokenizer) to OUT_DIR."""
    from adapterhub.base_model import load_base_info
    from adapterhub.tinybase import TinyBaseSpec, build_tiny_base

    path = build_tiny_base(out_dir, TinyBaseSpec(seed=seed), force=force)
    info = load_base_info(str(path))
    if json_output:
        emit_json({"path": str(path), "fingerprint": info.fingerprint})
    else:
        click.echo(f"built tiny base at {path} ({info.fingerprint[:19]})")


COMMANDS = [base]
