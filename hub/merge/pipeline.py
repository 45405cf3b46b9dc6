"""The two things ``adapterhub merge`` does, each one call: fold adapters into a standalone model
folder, or combine adapters into a new registry adapter."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..base_model import model_location
from ..errors import IncompatibleBase, MergeError
from ..refs import validate_name
from .export import copy_model_files, staged_output, write_model_card
from .fold import fold_into
from .plan import MergeOptions, MergePlan, plan_merge
from .sources import AdapterSource, open_sources
from .svd import write_adapter
from .verify import VerifyReport, check_verifiable, verify_merged

__all__ = ["MergeResult", "merge_model", "merge_adapter", "resolve_base"]

_BASE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken"]


@dataclass
class MergeResult:
    """What a merge wrote and, with ``verify``, how close it is to PEFT."""

    out: str
    base: str
    method: str
    adapters: list[dict[str, Any]]
    edited_tensors: int
    files: list[str]
    untied_embeddings: bool
    seconds: float
    verify: VerifyReport | None = None
    registry_ref: str | None = None
    adapter: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "verify"}
        d["verify"] = self.verify.to_dict() if self.verify else None
        return d


def resolve_base(base: str) -> Path:
    """A local folder of the base's files; a Hub id is downloaded (weights, config, tokenizer) first."""
    base = model_location(base)
    if os.path.isdir(base):
        return Path(base)
    if os.path.exists(base) or base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise IncompatibleBase(f"base {base}: no such model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, allow_patterns=_BASE_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated: all mean "cannot get the base here"
        raise IncompatibleBase(f"base {base}: not a local folder and not downloadable from the Hub ({e})") from e


def _lineage(plan: MergePlan) -> list[dict[str, Any]]:
    return [s.lineage(w) for s, w in zip(plan.sources, plan.weights)]


def _fold(sources: Sequence[AdapterSource], base: str, out: str | os.PathLike, options: MergeOptions,
          force: bool, verify: bool) -> MergeResult:
    started = time.perf_counter()
    base_dir = resolve_base(base)
    if Path(out).exists() and not force:
        raise MergeError(f"{out} already exists (pass --force to replace it)")
    plan = plan_merge(base_dir, sources, options)
    if verify:
        check_verifiable(plan.sources, plan.adapters, plan.weights, options.method)
    report = None
    with staged_output(out, force=force) as tmp:
        files = fold_into(plan, tmp)
        copy_model_files(base_dir, tmp, untied=plan.untied, dtype=options.dtype)
        write_model_card(tmp, base=base, adapters=_lineage(plan), method=options.method, density=options.density,
                         seed=options.seed, dtype=options.dtype, untied=plan.untied)
        if verify:
            fp32 = all(o.spec.dtype == "F32" for o in plan.outputs if o.spec.dtype in ("F32", "F16", "BF16"))
            report = verify_merged(tmp, base_dir, plan.sources, plan.weights, options.method, options.density,
                                   fp32=fp32)
            if not report.passed:
                raise MergeError(
                    f"--verify failed: max |logits difference| {report.max_abs_diff:.3g} against {report.reference} "
                    f"exceeds {report.tolerance:.3g}; nothing written"
                )
    return MergeResult(str(out), base, options.method, _lineage(plan), len(plan.edited), files, plan.untied,
                       round(time.perf_counter() - started, 3), report)


def merge_model(refs: Sequence[str], base: str, out: str | os.PathLike, options: MergeOptions, *,
                registry: str | None = None, force: bool = False, verify: bool = False) -> MergeResult:
    """Fold the adapters named by ``refs`` (registry references or folders) into ``base``, writing a
    complete model folder at ``out`` (atomically; an existing ``out`` only with ``force``)."""
    with open_sources(refs, registry) as sources:
        return _fold(sources, base, out, options, force, verify)


def merge_adapter(refs: Sequence[str], base: str, options: MergeOptions, *, name: str, rank: int | None,
                  task: str | None = None, registry: str | None = None) -> MergeResult:
    """Combine the adapters into one LoRA adapter and push it as ``name`` with lineage to its sources."""
    from ..location import open_registry

    started = time.perf_counter()
    validate_name(name)
    with open_sources(refs, registry) as sources:
        plan = plan_merge(resolve_base(base), sources, options)
        lineage = _lineage(plan)
        with tempfile.TemporaryDirectory(prefix="adapterhub-combined-") as tmp:
            export = write_adapter(plan, Path(tmp), rank=rank, base_name=base)
            labels = ", ".join(f"{a['ref']} x{a['weight']}" for a in lineage)
            version = open_registry(registry).push(
                tmp, name=name, task=task or next((s.task for s in sources if s.task), "merged"), base=base,
                lineage=lineage, description=f"{options.method} combination of {labels}",
            )
    return MergeResult(version.ref, base, options.method, lineage, len(plan.edited), [f.path for f in version.files], False, round(time.perf_counter() - started, 3),
                       registry_ref=version.ref, adapter=export.to_dict())
