"""``adapterhub base ...``: the embedded tiny default base model, and GGUF files as bases."""

from __future__ import annotations

import click

from .output import emit_json, json_option

__all__ = ["COMMANDS"]


@click.group()
def base() -> None:
    """Base models: build the embedded tiny default, import a GGUF file."""


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



@base.command("import")
@click.argument("gguf_file", metavar="FILE.gguf", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@json_option
def import_(gguf_file, out_dir, force, json_output):
    """Write FILE.gguf as a Hugging Face model folder (float32 safetensors, config, tokenizer with its
    chat template, generation config) to OUT_DIR. Any --base takes the .gguf file itself too; this
    gives a folder to share or to load with transformers alone."""
    from adapterhub.base_model import load_base_info
    from adapterhub.gguf_base import import_gguf

    path = import_gguf(gguf_file, out_dir, force=force)
    info = load_base_info(str(path))
    if json_output:
        emit_json({"path": str(path), "source": gguf_file, "fingerprint": info.fingerprint})
    else:
        click.echo(f"imported {gguf_file} to {path} ({info.fingerprint[:19]})")


COMMANDS = [base]
