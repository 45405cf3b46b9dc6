"""How commands talk to people and scripts: tables, one JSON document, one-line errors."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from typing import Any, Iterable, Sequence

import click

from adapterhub.errors import AdapterHubError, disk_full
from adapterhub.location import describe_default

__all__ = ["HubGroup", "RegistryOption", "emit_json", "render_table", "human_size", "registry_option", "json_option", "warn", "quiet_ml_libraries"]

DEBUG_ENV = "ADAPTERHUB_DEBUG"
TOKEN_ENV = "ADAPTERHUB_TOKEN"


class HubGroup(click.Group):
    """A click group that turns every failure into one line on stderr and a non-zero exit.

    Library errors carry messages written for people; anything else is a bug, reported as one
    line too (set ADAPTERHUB_DEBUG=1 for the traceback).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except AdapterHubError as e:
            failure = click.ClickException(str(e))
            failure.exit_code = e.exit_code
            raise failure from None
        except (OSError, ValueError, KeyError) as e:
            full = disk_full(e)
            if full is not None:
                raise click.ClickException(str(full)) from None
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            raise click.ClickException(f"{type(e).__name__}: {e}") from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as e:
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            raise click.ClickException(
                f"internal error: {type(e).__name__}: {e} (set {DEBUG_ENV}=1 for details)"
            ) from None


def registry_option(f):
    """``--registry``: a folder or http(s) URL; defaults per ``hub.location``. Also ``--token`` for a hub
    URL: it stands in for ``$ADAPTERHUB_TOKEN`` (which ``hub.remote`` reads) while the command runs."""

    @functools.wraps(f)
    def with_token(*args: Any, token: str | None = None, **kwargs: Any) -> Any:
        if token is None:
            return f(*args, **kwargs)
        saved = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = token
        try:
            return f(*args, **kwargs)
        finally:
            if saved is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = saved

    with_token = click.option(
        "--token", default=None, metavar="TOKEN",
        help="Token for a hub URL (default: $ADAPTERHUB_TOKEN, else the one `adapterhub login` stored for it).",
    )(with_token)
    return click.option(
        "--registry",
        "registry",
        cls=RegistryOption,
        envvar="ADAPTERHUB_REGISTRY",
        default=None,
        metavar="PATH|URL",
        help="Registry folder or hub URL.",
    )(with_token)


class RegistryOption(click.Option):
    """``--registry``, whose help states the default where and when the help is shown: the rule of
    ``hub.location`` gives a checkout's folder in a checkout and a per-user folder in a pip install."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = f"Registry folder or hub URL (default: {describe_default()})."
        return super().get_help_record(ctx)


def json_option(f):
    return click.option("--json", "json_output", is_flag=True, help="Print one JSON document for scripts.")(f)


def emit_json(doc: Any) -> None:
    """One JSON document. A list prints one compact record per line: still one document, and
    it keeps json's C encoder (indentation switches to the pure-Python one, far slower on the
    thousands of records a big registry lists). Standard JSON only: a NaN is an error, not ``NaN``."""
    if isinstance(doc, list):
        body = ",\n".join(json.dumps(item, sort_keys=True, allow_nan=False) for item in doc)
        click.echo(f"[\n{body}\n]" if doc else "[]")
    else:
        click.echo(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False))


def human_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned table; cells are stringified, '-' for empty."""
    cells = [[("-" if c in (None, "") else str(c)) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def quiet_ml_libraries() -> None:
    """Keep library chatter (progress bars, deprecation notes, optional-kernel probes) off the
    terminal, so a command prints only its own results. Cheap: imports none of the libraries."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Libraries imported already (by a host program, a test session) read that variable at import.
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    for name in ("bitsandbytes", "transformers", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("transformers", "peft", "torch", "bitsandbytes", "accelerate"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    # bitsandbytes imports triton whenever it is installed (xgrammar installs it), and triton's
    # bindings print hundreds of "nanobind: leaked ..." lines when the process exits. Without an
    # NVIDIA device nothing here uses triton (xgrammar's CPU mask kernel does not): keep it unloaded.
    if not os.path.exists("/dev/nvidiactl") and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` raises ImportError


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)

