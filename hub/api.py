"""adapterhub's public Python API: the command line's verbs as functions, for notebooks and programs.

Every function here calls the same library code as its ``adapterhub`` command, so a script and the
CLI store, refuse and report identically. ``registry`` arguments take an open registry (from
``open_registry``), a folder or hub URL, or ``None`` for the default location (``hub.location``).

Importing this module is cheap (no torch, transformers, peft or flask): each function imports the
heavy machinery it needs when called. Serving is described here (``EngineConfig``, ``HttpConfig``)
and run by the server package, which the library never imports: ``adapterhub.server.start_engine``.
See ``docs/python-api.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Union

from .location import as_registry
from .location import open_registry as _open_at
from .registry import AdapterVersion
from .registry_protocol import Registry
from .serving_config import EngineConfig, HttpConfig, RequestLimits, ServingConfig

if TYPE_CHECKING:
    from .merge import MergeOptions, MergeResult
    from .train.config import TrainConfig
    from .train.run import TrainRun

__all__ = [
    "Registry",
    "open_registry",
    "push",
    "pull",
    "list_adapters",
    "show",
    "merge_model",
    "merge_adapter",
    "train_adapter",
    "default_base",
    "EngineConfig",
    "HttpConfig",
    "RequestLimits",
    "ServingConfig",
]

# Where a function finds its registry: an open one, a folder or hub URL, or None for the default.
RegistryLike = Union[Registry, str, os.PathLike, None]


def open_registry(location: str | os.PathLike | None = None, *, token: str | None = None) -> Registry:
    """Open the registry at a folder or hub URL, once, for many calls (and to pass a hub token).

    ``None`` picks the default: ``$ADAPTERHUB_REGISTRY``, else the checkout's registry (when run
    from a source checkout), else ``$XDG_DATA_HOME/adapterhub``. A folder that does not exist yet
    becomes an empty registry on the first push. ``token`` authenticates to a hub URL (default
    ``$ADAPTERHUB_TOKEN``, else the token ``adapterhub login`` stored for that URL).

    Returns a ``LocalRegistry`` for a folder, a ``RemoteRegistry`` for an ``http(s)://`` URL.
    Raises ``RegistryCorrupt`` later, on first read, if the folder's index is unreadable.
    """
    return _open_at(location, token=token)


def _location_of(registry: RegistryLike) -> str | None:
    """What the merge pipeline takes: a location string (a hub's token then comes from the environment)."""
    if registry is None or isinstance(registry, (str, os.PathLike)):
        return None if registry is None else str(registry)
    return registry.location


def push(folder: str | os.PathLike, *, name: str, task: str, base: str | None = None, tags: Iterable[str] = (),
         description: str = "", metrics: Mapping[str, float] | None = None,
         registry: RegistryLike = None) -> AdapterVersion:
    """Store a PEFT adapter folder (``save_pretrained`` output) as the next version of ``name``.

    The adapter is validated, and checked against the base's weight shapes when the base can be
    read, before anything is stored; ``base`` defaults to the adapter's ``base_model_name_or_path``.
    ``latest`` moves to the new version, as do ``tags``.

    Returns the stored ``AdapterVersion``. Raises ``InvalidAdapter`` / ``UnsupportedAdapter`` for a
    folder PEFT would not load or adapterhub cannot use, ``IncompatibleBase`` for an adapter of
    another base, ``InvalidName`` for a bad name or tag, ``RemoteError`` / ``AuthError`` from a hub.
    """
    return as_registry(registry).push(folder, name=name, task=task, base=base, tags=tags, description=description,
                                metrics=metrics)


def pull(ref: str, out_dir: str | os.PathLike, *, force: bool = False, registry: RegistryLike = None) -> AdapterVersion:
    """Write adapter ``ref`` into ``out_dir``, a folder ``PeftModel.from_pretrained`` loads.

    ``ref`` is ``name``, ``name:tag``, ``name@3`` or ``name@sha256:<prefix>``; ``hf://org/repo[@rev]``
    first imports the adapter from ``$HF_ENDPOINT`` into the registry. Every file's digest is
    checked as it is written; ``force`` allows overwriting different files already in ``out_dir``.

    Returns the pulled ``AdapterVersion``. Raises ``AdapterNotFound``, ``InvalidReference``,
    ``DigestMismatch`` / ``ObjectMissing`` for a damaged store, ``InvalidName`` when ``out_dir``
    holds other files of the same names and ``force`` is not set.
    """
    store = as_registry(registry)
    if ref.startswith("hf://"):
        from .hf_import import import_from_hub

        ref = import_from_hub(ref, store).ref
    return store.pull(ref, out_dir, force=force)


def list_adapters(*, name: str | None = None, task: str | None = None, base: str | None = None,
                  adapter_type: str | None = None, registry: RegistryLike = None) -> list[AdapterVersion]:
    """The versions matching every filter given, by name then version: what a server could serve.

    ``base`` matches the base name as pushed or a prefix of its fingerprint (``sha256:...``);
    ``adapter_type`` is ``lora``, ``prompt_tuning`` or ``prompt_template``.

    Returns a list (empty when nothing matches). Raises ``RegistryCorrupt`` for an unreadable index,
    ``RemoteError`` from a hub.
    """
    return as_registry(registry).list(base=base, task=task, adapter_type=adapter_type, name=name)


def show(ref: str, *, registry: RegistryLike = None) -> AdapterVersion:
    """Resolve ``ref`` to the version it names now (tags move), with everything recorded about it.

    Returns the ``AdapterVersion``: files and digests, base fingerprint, PEFT settings, metrics,
    training record and lineage. Raises ``AdapterNotFound`` or ``InvalidReference``.
    """
    return as_registry(registry).resolve(ref)


def merge_model(refs: Sequence[str | os.PathLike], base: str | os.PathLike, out: str | os.PathLike,
          options: MergeOptions | None = None, *, verify: bool = False, force: bool = False,
          registry: RegistryLike = None) -> MergeResult:
    """Fold LoRA adapters (registry references or adapter folders) into ``base`` and write a standalone
    Hugging Face model folder at ``out``, loadable without PEFT.

    ``options`` (``MergeOptions``) chooses the method (``linear``, ``cat``, ``ties``, ``dare_*``),
    per-adapter weights, output dtype and shard size; the default adds each adapter once, as
    ``merge_and_unload`` would. ``verify`` compares logits with PEFT's own result before writing.
    The folder appears atomically; an existing ``out`` is replaced only with ``force``. A registry
    object's hub token does not travel: a hub is opened again by URL, with ``$ADAPTERHUB_TOKEN``.

    Returns a ``MergeResult`` (files written, tensors edited, the verify report). Raises
    ``MergeError`` (bad options, ``out`` exists, verify failed), ``IncompatibleBase``,
    ``UnsupportedAdapter`` (a LoRA variant that cannot be folded), ``AdapterNotFound``.
    """
    from .merge import MergeOptions, pipeline

    return pipeline.merge_model([str(r) for r in refs], str(base), out, options or MergeOptions(),
                                registry=_location_of(registry), force=force, verify=verify)


def merge_adapter(refs: Sequence[str | os.PathLike], base: str | os.PathLike, *, name: str,
            options: MergeOptions | None = None, rank: int | None = None, task: str | None = None,
            registry: RegistryLike = None) -> MergeResult:
    """Combine adapters into one new LoRA adapter and push it as ``name``, with lineage to its sources.

    The combination is computed as ``merge_model`` would fold it, then factored back to ``rank`` by a
    truncated SVD; every method but ``cat`` (which keeps the sources' ranks) needs ``rank``.
    ``task`` defaults to the first source's. Registry objects are handled as in ``merge_model``.

    Returns a ``MergeResult`` whose ``registry_ref`` names the new version and whose ``adapter``
    reports its rank and reconstruction error. Raises what ``merge_model`` raises, and ``InvalidName``.
    """
    from .merge import MergeOptions, pipeline

    return pipeline.merge_adapter([str(r) for r in refs], str(base), options or MergeOptions(), name=name,
                                  rank=rank, task=task, registry=_location_of(registry))


def train_adapter(base: str | os.PathLike, data: str | os.PathLike, config: TrainConfig | None = None, *, name: str,
          task: str, eval_data: str | os.PathLike | None = None, output: str | os.PathLike | None = None,
          push: bool = False, registry: RegistryLike = None, tags: Iterable[str] = (), description: str = "",
          resume: bool = False, progress: bool = False, threads: int | None = None) -> TrainRun:
    """Train a LoRA, QLoRA or prompt-tuning adapter on instruction data (Alpaca or chat JSONL).

    ``config`` (``TrainConfig``; default: LoRA r=8 for 3 epochs) sets the method and the settings.
    The run folder ``output`` (default ``./runs/NAME``) keeps checkpoints; ``resume`` continues
    from the last one. With ``eval_data`` the adapter and the bare base are evaluated on held-out
    rows; ``push`` stores the adapter with those metrics, the settings and the data's sha256, and
    checks the registry before training starts.

    Returns a ``TrainRun``: ``result`` (adapter folder, metrics) and ``pushed`` (the version or
    None). Raises ``TrainingDataError`` (a bad row, naming file and line), ``TrainingConfigError``,
    ``TrainingInterrupted`` (stopped by a signal; a checkpoint is saved), ``InvalidName``.
    """
    from .train.config import TrainConfig
    from .train.run import run_training

    return run_training(str(base), data, config or TrainConfig(), name=name, task=task, eval_data=eval_data,
                        output=output, push=push, registry=registry, tags=tags, description=description,
                        resume=resume, progress=progress, threads=threads)


def default_base() -> str:
    """The base a server runs when none is named: the tiny Llama, built once into
    ``$XDG_CACHE_HOME/adapterhub/tiny-llama`` (``~/.cache/...``), so nothing is downloaded.

    Returns the folder. Raises ``OSError`` when the cache folder cannot be written.
    """
    from .cache_dir import user_cache_dir
    from .tinybase import build_tiny_base

    folder = str(user_cache_dir("tiny-llama"))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        try:
            build_tiny_base(folder)
        except FileExistsError:  # another process built it meanwhile
            pass
    return folder
