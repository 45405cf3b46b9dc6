"""Registry commands: push, pull, list, show, tag, rm, verify, gc.

Each command parses its options, makes one call on the registry ``hub.location`` picks, and
renders the result; behaviour lives in ``hub``.
"""

from __future__ import annotations

import click

import adapterhub
from adapterhub.location import open_registry
from adapterhub.registry import AdapterVersion

from .output import emit_json, human_size, json_option, registry_option, render_table

__all__ = ["COMMANDS"]


def _version_line(v: AdapterVersion) -> str:
    tags = f" [{', '.join(v.tags)}]" if v.tags else ""
    return f"{v.ref}{tags} sha256:{v.digest[:12]} ({v.adapter_type}, {human_size(v.total_size)})"


@click.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--name", required=True, help="Adapter name (letters, digits, '.', '_', '-').")
@click.option("--task", required=True, help="What the adapter was trained for (free text, e.g. 'sentiment').")
@click.option("--base", default=None, help="Base model (folder or Hub id); default: the adapter's base_model_name_or_path.")
@click.option("--tag", "tags", multiple=True, help="Tag the new version (repeatable); 'latest' moves automatically.")
@click.option("--description", default="", help="One-paragraph description.")
@registry_option
@json_option
def push(folder, name, task, base, tags, description, registry, json_output):
    """Store a PEFT adapter FOLDER as the next version of NAME."""
    reg = open_registry(registry)
    v = reg.push(folder, name=name, task=task, base=base, tags=tags, description=description)
    if json_output:
        emit_json(v.to_json())
    else:
        click.echo(f"pushed {_version_line(v)}")


@click.command()
@click.argument("ref")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--force", is_flag=True, help="Overwrite files already in the folder.")
@registry_option
@json_option
def pull(ref, out, force, registry, json_output):
    """Write adapter REF into a folder that PeftModel.from_pretrained loads (digests verified).

    REF may be hf://org/repo[@revision]: the adapter is imported from $HF_ENDPOINT (default
    huggingface.co) into the registry first."""
    v = adapterhub.pull(ref, out, force=force, registry=registry)
    if json_output:
        emit_json(v.to_json() | {"output": str(out)})
    else:
        click.echo(f"pulled {_version_line(v)} -> {out}")


@click.command(name="list")
@click.option("--base", default=None, help="Only adapters for this base (name as pushed, or fingerprint prefix).")
@click.option("--task", default=None, help="Only adapters for this task.")
@click.option("--type", "adapter_type", type=click.Choice(["lora", "prompt_tuning"]), default=None)
@click.option("--name", default=None, help="Only versions of this adapter.")
@registry_option
@json_option
def list_(base, task, adapter_type, name, registry, json_output):
    """List adapter versions, newest last."""
    reg = open_registry(registry)
    versions = reg.list(base=base, task=task, adapter_type=adapter_type, name=name)
    if json_output:
        emit_json([v.to_json() for v in versions])
        return
    if not versions:
        click.echo("no adapters")
        return
    rows = [
        (
            v.name,
            v.version,
            ",".join(v.tags),
            v.adapter_type,
            v.task,
            v.base.get("name"),
            _config_brief(v),
            human_size(v.total_size),
            v.digest[:12],
            v.created,
        )
        for v in versions
    ]
    click.echo(render_table(("NAME", "VER", "TAGS", "TYPE", "TASK", "BASE", "CONFIG", "SIZE", "DIGEST", "CREATED"), rows))


def _config_brief(v: AdapterVersion) -> str:
    p = v.peft
    if v.adapter_type == "lora":
        rs = " rs" if p.get("use_rslora") else ""
        return f"r={p.get('r')} a={p.get('lora_alpha')}{rs}"
    return f"tokens={p.get('num_virtual_tokens')}"


@click.command()
@click.argument("ref")
@registry_option
@json_option
def show(ref, registry, json_output):
    """Show everything recorded about adapter REF."""
    v = open_registry(registry).resolve(ref)
    if json_output:
        emit_json(v.to_json())
        return
    lines = [
        f"{v.ref}  sha256:{v.digest}",
        f"  type         {v.adapter_type}",
        f"  task         {v.task}",
        f"  tags         {', '.join(v.tags) or '-'}",
        f"  base         {v.base.get('name')}  {v.base.get('fingerprint') or '(not inspected)'}",
        f"  created      {v.created}",
        f"  size         {human_size(v.total_size)}",
    ]
    if v.description:
        lines.append(f"  description  {v.description}")
    lines.append("  peft         " + ", ".join(f"{k}={val}" for k, val in sorted(v.peft.items())))
    if v.metrics:
        lines.append("  metrics      " + ", ".join(f"{k}={val:g}" for k, val in sorted(v.metrics.items())))
    for item in v.lineage:
        lines.append(f"  derived from {item.get('ref', item)}")
    lines.append("  files")
    for f in v.files:
        lines.append(f"    {f.path:<28} {human_size(f.size):>9}  sha256:{f.sha256}")
    click.echo("\n".join(lines))


@click.command()
@click.argument("ref")
@click.argument("tag")
@registry_option
@json_option
def tag(ref, tag, registry, json_output):
    """Point TAG at the version REF resolves to."""
    v = open_registry(registry).tag(ref, tag)
    if json_output:
        emit_json(v.to_json())
    else:
        click.echo(f"{v.name}:{tag} -> {v.ref}")


@click.command()
@click.argument("ref")
@click.option("--all", "all_versions", is_flag=True, help="Remove every version of the named adapter.")
@registry_option
@json_option
def rm(ref, all_versions, registry, json_output):
    """Remove version REF (or every version with --all); files stay until `gc`."""
    removed = open_registry(registry).remove(ref, all_versions=all_versions)
    if json_output:
        emit_json({"removed": [v.ref for v in removed]})
    else:
        for v in removed:
            click.echo(f"removed {v.ref}")


@click.command()
@registry_option
@json_option
def verify(registry, json_output):
    """Check that every referenced object is present and matches its digest."""
    report = open_registry(registry).verify()
    if json_output:
        emit_json(report.to_dict())
    else:
        for p in report.problems:
            click.echo(f"problem: {p}", err=True)
        if report.orphans:
            click.echo(f"{len(report.orphans)} unreferenced object(s) (run `adapterhub gc` to remove)")
        if report.temporaries:
            click.echo(f"{len(report.temporaries)} temporary file(s) of interrupted writes (removed by `gc`)")
        status = "ok" if report.ok else f"FAILED: {len(report.problems)} problem(s)"
        click.echo(f"{status}: {report.checked_versions} version(s), {report.checked_objects} object(s) checked")
    if not report.ok:
        raise SystemExit(1)


@click.command()
@registry_option
@json_option
def gc(registry, json_output):
    """Remove unreferenced objects and temporaries of interrupted writes."""
    report = open_registry(registry).gc()
    if json_output:
        emit_json(report.to_dict())
    else:
        click.echo(
            f"removed {report.removed_objects} object(s) and {report.removed_temporaries} temporary file(s), "
            f"freed {human_size(report.freed_bytes)}"
        )


COMMANDS = [push, pull, list_, show, tag, rm, verify, gc]
