"""``adapterhub login`` / ``logout``: keep a hub's token so commands against its URL need no ``--token``.

Login checks the token on the hub before storing it (``hub.credentials`` keeps it, mode 0600) with the
Hub protocol's who-am-I route, ``GET /api/whoami-v2`` (what ``hf auth login`` calls): it answers the
token's role, ``write`` or ``read``, or 401 for a token the hub does not know (refused, nothing
stored). Tokens are never printed.
"""

from __future__ import annotations

import click

from adapterhub.credentials import credentials_path, forget_token, hub_key, store_token
from adapterhub.errors import RemoteError
from adapterhub.location import ENV_REGISTRY, default_location, is_remote

from .output import emit_json, json_option

__all__ = ["COMMANDS"]

_CHECK_ROUTE = "/api/whoami-v2"


def _hub_url(registry: str | None) -> str:
    location = registry or default_location()
    if not is_remote(location):
        raise click.ClickException(
            f"{location} is a registry folder; login keeps a token for a hub URL: pass --registry http(s)://HOST:PORT "
            f"(or set ${ENV_REGISTRY} to one)"
        )
    return hub_key(location)


def _scope_of(url: str, token: str) -> str:
    """The scope the hub grants ``token`` ("write" or "read"); ``AuthError`` when it does not know it."""
    import httpx2  # with hub.remote: only login pays for the HTTP client's import

    from adapterhub.remote import raise_for_status

    headers = {"Authorization": f"Bearer {token}", "User-Agent": "adapterhub"}
    try:
        with httpx2.Client(base_url=url, headers=headers, timeout=30.0) as client:
            response = client.get(_CHECK_ROUTE)
    except httpx2.HTTPError as e:
        raise RemoteError(f"cannot reach the hub at {url}: {e}") from None
    raise_for_status(response, f"GET {_CHECK_ROUTE}")
    try:
        role = response.json()["auth"]["accessToken"]["role"]
    except (ValueError, KeyError, TypeError):
        role = None
    if role not in ("read", "write"):
        raise RemoteError(f"{url} answered GET {_CHECK_ROUTE} without a token role: is it an adapterhub hub?")
    return role


def _check_token_text(token: str) -> str:
    token = token.strip()
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise click.ClickException("a token is one word of printable ASCII characters")
    return token


def _registry_option(f):
    return click.option(
        "--registry", "registry", envvar=ENV_REGISTRY, default=None, metavar="URL",
        help=f"Hub URL (default: ${ENV_REGISTRY}, which must then be a URL).",
    )(f)


@click.command()
@_registry_option
@click.option("--token", default=None, metavar="TOKEN",
              help="The token (default: asked for, without echo; a pipe on stdin works too).")
@json_option
def login(registry, token, json_output):
    """Check a token on the hub and store it for that URL, readable by you only.

    Commands against the URL then use it when neither --token nor $ADAPTERHUB_TOKEN gives one."""
    url = _hub_url(registry)
    if token is None:
        token = click.prompt(f"Token for {url}", hide_input=True, err=True)
    token = _check_token_text(token)
    scope = _scope_of(url, token)
    path = store_token(url, token)
    if json_output:
        emit_json({"registry": url, "scope": scope, "credentials": str(path)})
    else:
        click.echo(f"logged in to {url} ({scope} scope); token stored in {path}")


@click.command()
@_registry_option
@json_option
def logout(registry, json_output):
    """Remove the token stored for a hub URL."""
    url = _hub_url(registry)
    removed = forget_token(url)
    if json_output:
        emit_json({"registry": url, "removed": removed, "credentials": str(credentials_path())})
    elif removed:
        click.echo(f"logged out of {url}: its token is removed from {credentials_path()}")
    else:
        click.echo(f"no token stored for {url}")


COMMANDS = [login, logout]
