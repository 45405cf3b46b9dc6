"""What a base model looks like from its files: weight names and shapes, and a fingerprint of them.

An adapter belongs to a base architecture, not to a spelling of its name: ``./llama``,
``meta-llama/Llama-3.2-1B`` and a bf16 copy of it are the same base if they hold the same weights
with the same shapes. The fingerprint hashes exactly that, read from safetensors headers (no
weights loaded), so the registry, the merger and the server agree on compatibility without torch.

``model_location`` is where a base argument becomes the files every loader opens: a ``.gguf``
file stands for its Hugging Face copy (``gguf_base``), so a GGUF and that copy are one base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapter_folder import AdapterFolder
from .errors import IncompatibleBase
from .gguf_base import gguf_hf_folder, is_gguf
from .peft_format import SafetensorsFormatError, TensorInfo, base_weight_name, check_shapes_fit, read_safetensors_header

__all__ = ["BaseInfo", "load_base_info", "model_location", "check_adapter_fits", "SAFETENSORS_INDEX", "base_weight_files",
           "read_base_headers"]

log = logging.getLogger(__name__)

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class BaseInfo:
    """Architecture-level identity of a base model."""

    name: str
    model_type: str | None
    hidden_size: int | None
    weights: dict[str, tuple[int, ...]]

    @property
    def fingerprint(self) -> str:
        canon = json.dumps(
            {"model_type": self.model_type, "weights": sorted([k, list(v)] for k, v in self.weights.items())},
            separators=(",", ":"),
        )
        return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()

    def find_weight(self, module_or_tensor: str) -> str | None:
        """The checkpoint name for a module path as PEFT sees it (see ``peft_format.base_weight_name``)."""
        return base_weight_name(self.weights, module_or_tensor)


def base_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a local model folder, single-file or sharded."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in sorted(set(weight_map.values()))]
    single = folder / SAFETENSORS_SINGLE
    return [single] if single.is_file() else []


def read_base_headers(name: str, files: list[Path]) -> dict[Path, dict[str, TensorInfo]]:
    """Each weight file's safetensors header; an unreadable one makes the base unusable, not the adapter."""
    headers = {}
    for f in files:
        try:
            headers[f] = read_safetensors_header(f)
        except (OSError, SafetensorsFormatError) as e:
            raise IncompatibleBase(f"base {name}: cannot read {f.name}: {e}") from e
    return headers


def _config_fields(config: dict[str, Any]) -> tuple[str | None, int | None]:
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    if hidden is None and isinstance(config.get("text_config"), dict):
        hidden = config["text_config"].get("hidden_size")
    return config.get("model_type"), hidden


def _from_folder(folder: Path, name: str) -> BaseInfo | None:
    cfg = folder / "config.json"
    files = base_weight_files(folder)
    if not cfg.is_file() or not files:
        return None
    model_type, hidden = _config_fields(json.loads(cfg.read_text()))
    weights = {k: v.shape for header in read_base_headers(name, files).values() for k, v in header.items()}
    return BaseInfo(name, model_type, hidden, weights)


def _from_hub(repo_id: str, revision: str | None) -> BaseInfo | None:
    """Read headers over HTTP (range requests) when the Hub is reachable; None when it is not."""
    try:
        from huggingface_hub import get_safetensors_metadata, hf_hub_download

        meta = get_safetensors_metadata(repo_id, revision=revision)
        config = json.loads(Path(hf_hub_download(repo_id, "config.json", revision=revision)).read_text())
    except Exception as e:  # offline, gated, missing: the base is simply not inspectable here
        log.info("base %s not inspectable: %s", repo_id, e)
        return None
    weights = {
        k: tuple(t.shape) for fm in meta.files_metadata.values() for k, t in fm.tensors.items()
    }
    model_type, hidden = _config_fields(config)
    return BaseInfo(repo_id, model_type, hidden, weights)


def model_location(base: str) -> str:
    """What transformers and the header readers open for ``base``: a GGUF file's Hugging Face copy
    (built into the cache on first use), else ``base`` itself (a folder or a Hub id)."""
    return str(gguf_hf_folder(base)) if is_gguf(base) else base


def load_base_info(base: str, revision: str | None = None) -> BaseInfo | None:
    """Describe ``base`` (a local folder, a GGUF file or a Hub id); ``None`` when its files cannot be reached."""
    location = model_location(base)
    if os.path.isdir(location):
        return _from_folder(Path(location), base)
    if os.path.exists(base):
        raise IncompatibleBase(f"base {base}: not a model folder")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or base.startswith((".", "/")):
        return None
    return _from_hub(base, revision)


def check_adapter_fits(adapter: AdapterFolder, base: BaseInfo) -> None:
    """Raise ``IncompatibleBase`` naming the first tensor that does not fit a module of ``base``."""
    shapes = {use.module: use.weight_shape for use in adapter.modules}
    check_shapes_fit(shapes, base.weights, base=base.name, hidden_size=base.hidden_size)
