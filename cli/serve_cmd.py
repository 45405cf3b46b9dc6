"""``adapterhub serve``: one base model, every compatible adapter of a registry, an OpenAI-compatible API."""

from __future__ import annotations

import re

import click

from .output import registry_option

__all__ = ["COMMANDS"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class ByteSize(click.ParamType):
    """A byte count: ``1073741824``, ``512MB``, ``1GiB``."""

    name = "bytes"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = m and m.group(2).lower()
        if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
            self.fail(f"{value!r} is not a byte size (e.g. 1073741824, 512MB, 1GiB)", param, ctx)
        return int(float(m.group(1)) * _UNITS[unit])


@click.command()
@click.option("--base", default=None, metavar="PATH|HUB_ID",
              help="Base model folder or Hub id (default: the tiny base, built once into the cache).")
@registry_option
@click.option("--quantize", type=click.Choice(["nf4", "int8", "none"]), default="nf4", show_default=True,
              help="bitsandbytes quantization of the base weights.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--max-loaded-adapters", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Adapters resident at once, per kind (least recently used evicted).")
@click.option("--max-adapter-memory", default="1GiB", show_default=True, type=ByteSize(),
              help="Bytes of adapter weights resident at once, per kind.")
@click.option("--preload", multiple=True, metavar="REF", help="Load this adapter at start-up (repeatable).")
@click.option("--max-batch-size", default=16, show_default=True, type=click.IntRange(1, 1024),
              help="Most requests decoded together.")
@click.option("--max-lora-rank", default=64, show_default=True, type=click.IntRange(1, 1024),
              help="Largest LoRA rank a slot holds.")
@click.option("--threads", default=64, show_default=True, type=click.IntRange(1, 1024),
              help="HTTP worker threads (each open stream holds one).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the GPU if there is one).")
def serve(base, registry, quantize, host, port, max_loaded_adapters, max_adapter_memory, preload, max_batch_size,
          max_lora_rank, threads, device):
    """Serve a base model with a different adapter per request (OpenAI API at /v1).

    One engine thread owns the model and batches requests for different LoRA adapters, soft prompts
    and the base together; adapters load from the registry on first use.
    """
    from adapterhub.api import start_engine
    from adapterhub.server.http.app import create_app
    from adapterhub.server.http.wsgi import run

    with start_engine(base, registry=registry, quantize=quantize, device=device, max_batch_size=max_batch_size,
                      max_loaded_adapters=max_loaded_adapters, max_adapter_bytes=max_adapter_memory,
                      max_lora_rank=max_lora_rank, preload=preload) as handle:
        loaded = handle.engine.loaded

        def ready(url: str) -> None:
            click.echo(f"serving {loaded.name} ({quantize}, {loaded.device}) on {url}: OpenAI API at {url}/v1",
                       err=True)

        # send_bytes=1: hand every server-sent event to the socket at once (streaming is token by token).
        run(create_app(handle.registry, engine=handle.engine), host, port, threads, ready=ready, send_bytes=1)


COMMANDS = [serve]
