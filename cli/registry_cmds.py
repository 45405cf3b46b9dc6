"""Registry commands: push, pull, list, show, tag, untag, rm, verify, gc, migrate.

Each command parses its options, makes one call on the registry ``hub.location`` picks, and
renders the result; behaviour lives in ``hub``.
"""

from __future__ import annotations

import click

import adapterhub
from adapterhub.index import INDEX_ENV
from adapterhub.index.migrate import migrate_registry
from adapterhub.location import open_registry, registry_folder
from adapterhub.refs import parse_reference
from adapterhub.registry import AdapterVersion, LocalRegistry

from .output import emit_json, human_size, json_option, registry_option, render_table

__all__ = ["COMMANDS"]

DEFAULT_PAGE = 100


def index_option(f):
    """``--index``: the index engine of a registry folder, recorded when the registry is created."""
    return click.option(
        "--index", "index", envvar=INDEX_ENV, default=None, metavar="sqlite|postgresql://...",
        help="Index of a new registry folder: sqlite (default, a file beside the objects) or a PostgreSQL "
             "URL shared by several machines; recorded in registry.json (default: $ADAPTERHUB_INDEX).",
    )(f)


def _version_line(v: AdapterVersion) -> str:
    tags = f" [{', '.join(v.tags)}]" if v.tags else ""
    return f"{v.ref}{tags} sha256:{v.digest[:12]} ({v.adapter_type}, {human_size(v.total_size)})"


@click.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--name", required=True, help="Adapter name (letters, digits, '.', '_', '-').")
@click.option("--task", required=True, help="What the adapter was trained for (free text, e.g. 'sentiment').")
@click.option("--base", default=None, help="Base model (folder, .gguf file or Hub id); default: the adapter's base_model_name_or_path.")
@click.option("--tag", "tags", multiple=True, help="Tag the new version (repeatable); 'latest' moves automatically.")
@click.option("--description", default="", help="One-paragraph description.")
@registry_option
@index_option
@json_option
def push(folder, name, task, base, tags, description, registry, index, json_output):
    """Store a PEFT adapter FOLDER (or a prompt template's: prompt_template.json) as the next version of NAME."""
    reg = open_registry(registry, index=index)
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
@index_option
@json_option
def pull(ref, out, force, registry, index, json_output):
    """Write adapter REF into a folder that PeftModel.from_pretrained loads (digests verified).

    REF may be hf://org/repo[@revision]: the adapter is imported from $HF_ENDPOINT (default
    huggingface.co) into the registry first."""
    v = adapterhub.pull(ref, out, force=force, registry=open_registry(registry, index=index))
    if json_output:
        emit_json(v.to_json() | {"output": str(out)})
    else:
        click.echo(f"pulled {_version_line(v)} -> {out}")


@click.command(name="list")
@click.option("--base", default=None, help="Only adapters for this base (name as pushed, or fingerprint prefix).")
@click.option("--task", default=None, help="Only adapters for this task.")
@click.option("--type", "adapter_type", type=click.Choice(["lora", "prompt_tuning", "prompt_template"]), default=None)
@click.option("--name", default=None, help="Only versions of this adapter.")
@click.option("--tag", default=None, help="Only versions this tag points at ('latest': the newest of each name).")
@click.option("--limit", type=click.IntRange(min=0), default=DEFAULT_PAGE, show_default=True,
              help="At most this many versions (a page); 0 lists every one.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="Which page of --limit versions.")
@click.option("--after", default=None, metavar="NAME@VERSION",
              help="Start after this version (the last one of the previous page): a cursor, cheaper than --page.")
@registry_option
@index_option
@json_option
def list_(base, task, adapter_type, name, tag, limit, page, after, registry, index, json_output):
    """List adapter versions by name, newest last, a page at a time (filters and paging run in the index)."""
    if page > 1 and after is not None:
        raise click.UsageError("give --page or --after, not both")
    if page > 1 and not limit:
        raise click.UsageError("--page needs a --limit")
    reg = open_registry(registry, index=index)
    filters = dict(base=base, task=task, adapter_type=adapter_type, name=name, tag=tag)
    if limit:
        versions = reg.list(**filters, limit=limit + 1, offset=(page - 1) * limit, after=after)
        more, versions = len(versions) > limit, versions[:limit]
    else:
        versions, more = reg.list(**filters, after=after), False
    if more:
        click.echo(f"more than {limit} versions: next page with --after {versions[-1].ref} "
                   f"(or --page {page + 1}); --limit 0 lists all", err=True)
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
    if v.adapter_type == "prompt_template":
        return f"examples={p.get('examples')}"
    return f"tokens={p.get('num_virtual_tokens')}"


@click.command()
@click.argument("ref")
@registry_option
@index_option
@json_option
def show(ref, registry, index, json_output):
    """Show everything recorded about adapter REF."""
    v = open_registry(registry, index=index).resolve(ref)
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
@index_option
@json_option
def tag(ref, tag, registry, index, json_output):
    """Point TAG at the version REF resolves to."""
    v = open_registry(registry, index=index).tag(ref, tag)
    if json_output:
        emit_json(v.to_json())
    else:
        click.echo(f"{v.name}:{tag} -> {v.ref}")


@click.command()
@click.argument("ref")
@click.option("--all", "all_versions", is_flag=True, help="Remove every version of the named adapter.")
@registry_option
@index_option
@json_option
def rm(ref, all_versions, registry, index, json_output):
    """Remove version REF (NAME@N or NAME@sha256:DIGEST), or every version of NAME with --all.

    NAME:TAG removes only the tag and keeps its version, as `docker rmi` does (the same as
    `untag NAME:TAG`; `latest` is not removed, it follows the newest version). A bare NAME is
    refused: say which version. Files stay until `gc`."""
    reg = open_registry(registry, index=index)
    parsed = parse_reference(ref)
    if parsed.tag is not None and not parsed.bare and not all_versions:
        _report_untag(reg.untag(ref), parsed.tag, json_output)
        return
    removed = reg.remove(ref, all_versions=all_versions)
    if json_output:
        emit_json({"removed": [v.ref for v in removed], "untagged": []})
    else:
        for v in removed:
            click.echo(f"removed {v.ref}")


@click.command()
@click.argument("ref")
@click.argument("tag", required=False)
@registry_option
@index_option
@json_option
def untag(ref, tag, registry, index, json_output):
    """Remove a tag and keep its version: `untag NAME:TAG`, or `untag REF TAG` (TAG must point at
    the version REF names). `latest` is not removed: it follows the newest version."""
    tag_name = tag if tag is not None else parse_reference(ref).tag
    _report_untag(open_registry(registry, index=index).untag(ref, tag), tag_name, json_output)


def _report_untag(v: AdapterVersion, tag: str | None, json_output: bool) -> None:
    if json_output:
        emit_json({"removed": [], "untagged": [f"{v.name}:{tag}"], "version": v.to_json()})
    else:
        click.echo(f"untagged {v.name}:{tag} ({v.ref} stays{', tags: ' + ', '.join(v.tags) if v.tags else ''})")


@click.command()
@registry_option
@index_option
@json_option
def verify(registry, index, json_output):
    """Check that every referenced object is present and matches its digest."""
    report = open_registry(registry, index=index).verify()
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
@index_option
@json_option
def gc(registry, index, json_output):
    """Remove unreferenced objects and temporaries of interrupted writes."""
    report = open_registry(registry, index=index).gc()
    if json_output:
        emit_json(report.to_dict())
    else:
        click.echo(
            f"removed {report.removed_objects} object(s) and {report.removed_temporaries} temporary file(s) or "
            f"folder(s), freed {human_size(report.freed_bytes)}"
        )


@click.command()
@registry_option
@index_option
@json_option
def migrate(registry, index, json_output):
    """Convert a registry whose registry.json holds the whole index (the old format) to the
    manifest and an index (SQLite, or --index postgresql://... into an empty database), in place.

    Every version, tag, metric, lineage record and digest is kept; the objects stay where they are;
    the old registry.json is kept as registry.v1.json."""
    reg = LocalRegistry(registry_folder(registry, "migrate"))
    report = migrate_registry(reg.root, index=index, durable=reg.durable)
    if json_output:
        emit_json(report.to_dict())
    elif report.migrated:
        click.echo(f"migrated {reg.root}: {report.versions} version(s) of {report.adapters} adapter(s), "
                   f"{report.tags} tag(s) into {report.index}; the old index is kept as {report.backup}")
    else:
        click.echo(f"{reg.root} already uses the new format (index: {report.index}); nothing to do")


COMMANDS = [push, pull, list_, show, tag, untag, rm, verify, gc, migrate]
