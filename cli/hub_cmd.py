"""``adapterhub hub ...``: serve a registry folder over HTTP and manage its access tokens."""

from __future__ import annotations

import click

from adapterhub.location import registry_folder
from adapterhub.serving_config import HUB_BODY_SLACK_BYTES, HUB_MAX_OBJECT_BYTES, HttpConfig

from .config_options import config_option
from .output import emit_json, json_option, registry_option, render_table

__all__ = ["COMMANDS"]


@click.group()
def hub() -> None:
    """Share a registry over HTTP (adapterhub API, Hugging Face Hub downloads, a web page)."""


@hub.command()
@registry_option
@config_option(HttpConfig, "host")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256), help="Worker threads.")
@config_option(HttpConfig, "max_waiting_http_requests")
@click.option("--read-token-required", is_flag=True, help="Reads need a token too (default: reads are open).")
@click.option("--max-object-bytes", default=HUB_MAX_OBJECT_BYTES, show_default=True, type=click.IntRange(1),
              help="Largest file one upload may carry.")
@click.option("--allow-local-bases", is_flag=True,
              help="Accept pushes whose base is a folder path, read on this machine (one-machine setups).")
def serve(registry, host, port, threads, max_waiting_http_requests, read_token_required, max_object_bytes,
          allow_local_bases):
    """Serve the registry folder: push/pull API at /api, HF Hub protocol, web page at /, /health and /metrics."""
    from adapterhub.registry import LocalRegistry
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.auth import READ_TOKEN_REQUIRED
    from adapterhub.server.http.registry_api import ALLOW_LOCAL_BASES, MAX_OBJECT_BYTES
    from adapterhub.server.http.wsgi import run

    root = registry_folder(registry, "adapterhub hub serve")  # absolute: the hub links to paths inside it
    app = create_app(
        LocalRegistry(root),
        config={
            READ_TOKEN_REQUIRED: read_token_required,
            MAX_OBJECT_BYTES: max_object_bytes,
            ALLOW_LOCAL_BASES: allow_local_bases,
        },
    )
    reads = "token required" if read_token_required else "open"

    def ready(url: str) -> None:
        click.echo(f"serving registry {root} on {url} (reads {reads}, writes need a write token)", err=True)

    run(app, host, port, threads, max_request_body_size=max_object_bytes + HUB_BODY_SLACK_BYTES, ready=ready,
        max_waiting_requests=max_waiting_http_requests)


@hub.group()
def token() -> None:
    """Access tokens of a registry folder (stored hashed in its tokens.json)."""


@token.command("create")
@click.option("--scope", type=click.Choice(["read", "write"]), required=True, help="write also allows reading.")
@click.option("--name", default="", help="Who or what the token is for.")
@registry_option
@json_option
def token_create(scope, name, registry, json_output):
    """Create a token; it is printed once and only its hash is kept."""
    from adapterhub.tokens import TokenStore

    secret, record = TokenStore(registry_folder(registry, "adapterhub hub token")).create(scope, name)
    if json_output:
        emit_json(record.public() | {"token": secret})
    else:
        click.echo(secret)
        click.echo(f"token {record.id} ({scope}) created; it is shown only now: export ADAPTERHUB_TOKEN=...",
                   err=True)


@token.command("list")
@registry_option
@json_option
def token_list(registry, json_output):
    """List tokens (ids, names, scopes; never the tokens)."""
    from adapterhub.tokens import TokenStore

    records = TokenStore(registry_folder(registry, "adapterhub hub token")).records()
    if json_output:
        emit_json([r.public() for r in records])
    else:
        click.echo(render_table(["id", "scope", "name", "created"], [(r.id, r.scope, r.name, r.created) for r in records]))


@token.command("revoke")
@click.argument("token_id")
@registry_option
@json_option
def token_revoke(token_id, registry, json_output):
    """Revoke a token by id; a running hub refuses it from its next request."""
    from adapterhub.tokens import TokenStore

    record = TokenStore(registry_folder(registry, "adapterhub hub token")).revoke(token_id)
    if json_output:
        emit_json(record.public())
    else:
        click.echo(f"revoked token {record.id} ({record.scope})")


COMMANDS = [hub]
