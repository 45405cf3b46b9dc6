"""GGUF files as bases: each one's Hugging Face copy, built once and kept in the user cache.

Everything in adapterhub that opens a base (the fingerprint, the server, training, the merge) reads
a Hugging Face folder: ``config.json`` and safetensors weights. A ``.gguf`` file (llama.cpp's
format, often the only copy people have) becomes such a folder here: transformers loads it with
its GGUF support, dequantized to float32, and its weights go into a model built from the same
config (a GGUF-loaded model refuses ``save_pretrained``), saved with the tokenizer, chat template
and generation config the file carries. The result is an ordinary base: adapters made on it fit
the GGUF file and the other way round, since both have the same fingerprint.

The copy is cached under ``user_cache_dir("gguf")``, named by the file's size and sha256, so moving
or renaming the file keeps its copy and a changed file gets a new one. Hashing a big file takes a
while, so the key is remembered per (path, size, mtime): a second use costs a ``stat``. The copy is
built in a temporary folder and renamed into place whole; two processes building the same copy
both finish and the first rename wins. A file that is not a usable GGUF raises
``InvalidBaseFile`` and leaves nothing in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .atomic_file import staged_folder, write_json_atomic
from .cache_dir import user_cache_dir
from .errors import IncompatibleBase, InvalidBaseFile

__all__ = ["is_gguf", "gguf_hf_folder", "import_gguf", "GGUF_SUFFIX"]

GGUF_SUFFIX = ".gguf"
_MAGIC = b"GGUF"
_HASH_CHUNK = 1 << 22


def is_gguf(base: str | os.PathLike) -> bool:
    """Whether ``base`` names a GGUF file (by its suffix: a Hub id or a folder never ends so)."""
    return str(base).lower().endswith(GGUF_SUFFIX)


def gguf_hf_folder(path: str | os.PathLike) -> Path:
    """The Hugging Face copy of the GGUF file at ``path``, built into the cache on first use.

    Raises ``InvalidBaseFile`` for a missing, foreign, truncated or unsupported file.
    """
    gguf = Path(path).expanduser().resolve()
    if not gguf.is_file():
        raise InvalidBaseFile(f"base {path}: no such file")
    cache, memo, stamp = user_cache_dir("gguf"), _memo_file(gguf), _stamp(gguf)
    key = _remembered_key(memo, stamp)
    if key is not None and (cache / key).is_dir():
        return cache / key
    _check_readable(gguf, path)
    folder = cache / f"{stamp['size']}-{_sha256(gguf)[:32]}"
    if not folder.is_dir():
        with staged_folder(folder, keep_existing=True) as tmp:
            _convert(gguf, path, tmp)
    write_json_atomic(memo, {**stamp, "key": folder.name})
    return folder


def import_gguf(path: str | os.PathLike, out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the Hugging Face copy of the GGUF file at ``path`` to ``out_dir`` (atomically); an
    ``out_dir`` with files in it is replaced only with ``force``."""
    out = Path(out_dir)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty (use --force to replace it)")
    folder = gguf_hf_folder(path)
    with staged_folder(out) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
    return out


def _memo_file(gguf: Path) -> Path:
    return user_cache_dir("gguf", "keys") / (hashlib.sha256(str(gguf).encode()).hexdigest()[:32] + ".json")


def _stamp(gguf: Path) -> dict[str, object]:
    st = gguf.stat()
    return {"path": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remembered_key(memo: Path, stamp: dict[str, object]) -> str | None:
    """The content key recorded for this very file (same path, size and mtime), if any."""
    try:
        doc = json.loads(memo.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or {k: doc.get(k) for k in stamp} != stamp or not isinstance(doc.get("key"), str):
        return None
    return doc["key"]


def _sha256(gguf: Path) -> str:
    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_readable(gguf: Path, shown: str | os.PathLike) -> None:
    """Refuse a file that is not a GGUF, or whose header and tensors do not fit in its bytes."""
    with gguf.open("rb") as f:
        if f.read(len(_MAGIC)) != _MAGIC:
            raise InvalidBaseFile(f"base {shown}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise IncompatibleBase(f"base {shown}: reading GGUF files needs the gguf package "
                               "(pip install 'adapterhub[gguf]')") from e
    try:
        GGUFReader(gguf)
    except Exception as e:  # numpy, struct and index errors alike: the bytes end before the layout does
        raise InvalidBaseFile(f"base {shown}: truncated or corrupt GGUF file ({_first_line(e)})") from e


def _convert(gguf: Path, shown: str | os.PathLike, out: Path) -> None:
    """Dequantize ``gguf`` to float32 and save it, its tokenizer and generation config, into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    try:
        loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(**where)
    except Exception as e:  # transformers raises ValueError, KeyError, ... for what it cannot map
        raise InvalidBaseFile(f"base {shown}: transformers cannot load this GGUF ({_first_line(e)})") from e
    config = loaded.config
    del config.quantization_config  # the copy is plain float32 weights
    config.name_or_path = gguf.name  # not the title the converter wrote into the file
    with torch.device("meta"):  # no random initialisation: every saved weight comes from the file
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
