"""The merged model as a complete Hugging Face folder, landed atomically.

Everything is written into a hidden temporary folder beside ``--out`` and renamed into place only
when complete (and verified, when asked), so a crash or a failed check leaves no half model and an
existing folder is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..atomic_file import staged_folder
from ..errors import MergeError

__all__ = ["staged_output", "copy_model_files", "write_model_card", "WEIGHT_SUFFIXES"]

# Weight files of every format: never copied from the base (the merge writes its own).
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth",
                   ".ckpt", ".h5", ".msgpack", ".gguf")
_NOT_COPIED = {"README.md", ".gitattributes"}
_TORCH_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``out`` when the block finishes without error."""
    out = Path(out)
    if out.exists() and not force:
        raise MergeError(f"{out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise MergeError(f"{out} exists and is not a folder")
    with staged_folder(out) as tmp:
        yield tmp


def copy_model_files(base_dir: Path, out_dir: Path, *, untied: bool, dtype: str | None) -> list[str]:
    """Copy config, generation config, tokenizer and any other non-weight file of the base.

    ``config.json`` is rewritten when the merge unties the embeddings or changes the dtype.
    """
    copied = []
    for f in sorted(base_dir.iterdir()):
        if not f.is_file() or f.name in _NOT_COPIED or f.name.endswith(WEIGHT_SUFFIXES):
            continue
        shutil.copy2(f, out_dir / f.name)
        copied.append(f.name)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    if untied:
        config["tie_word_embeddings"] = False
    if dtype is not None:
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = _TORCH_DTYPE_NAMES[dtype]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return copied


def write_model_card(out_dir: Path, *, base: str, adapters: Sequence[dict[str, Any]], method: str,
                     density: float | None, seed: int, dtype: str | None, untied: bool) -> None:
    """README.md naming the base and every merged adapter with its digest and weight."""
    lines = [
        "---",
        f"base_model: {json.dumps(base)}",
        "library_name: transformers",
        "tags:",
        "- adapterhub",
        "- merge",
        "- lora",
        "---",
        "",
        "# Merged model",
        "",
        f"Base model `{base}` with the following LoRA adapter(s) folded into its weights by "
        f"`adapterhub merge` (method `{method}`"
        + (f", density {density}" if density is not None else "")
        + (f", seed {seed}" if method.startswith("dare") else "")
        + (f", dtype {dtype}" if dtype else "")
        + "). It loads with `AutoModelForCausalLM.from_pretrained` and needs no adapter library.",
        "",
        "| adapter | digest | weight |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{a['ref']}` | `{a['digest']}` | {a['weight']} |" for a in adapters]
    if untied:
        lines += ["", "The merge changed only one side of the base's tied input/output embeddings, so both are "
                      "written and `tie_word_embeddings` is false."]
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
