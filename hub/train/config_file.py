"""``adapterhub train --config FILE.yaml``: every flag from a file, with TRL's and PEFT's names accepted.

A config is a YAML (or JSON) mapping. Keys are the command's flags with ``_`` or ``-``
(``max_steps``, ``eval-data``) or TRL's/PEFT's names for the same settings (``learning_rate``,
``lora_r``, ``per_device_train_batch_size``...; ``config.TRL_NAMES``). Flags given on the command
line win over the file. An unknown key or a file that is not a mapping is one line naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import TrainingConfigError
from .config import TRL_NAMES

__all__ = ["FLAG_ALIASES", "read_config_file"]

# Names a config may use for flags whose parameter is named otherwise.
FLAG_ALIASES = {**TRL_NAMES, "tag": "tags", "json": "json_output", "model_name_or_path": "base",
                "dataset": "data", "output_dir": "output"}


def _normal(key: str) -> str:
    key = key.strip().replace("-", "_")
    return FLAG_ALIASES.get(key, key)


def read_config_file(path: str | os.PathLike, known: Iterable[str]) -> dict[str, Any]:
    """The file's settings keyed by parameter name (one of ``known``); lists of modules become ``a,b``."""
    import yaml

    known = set(known)
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise TrainingConfigError(f"config {path}: cannot read it ({e.strerror or e.__class__.__name__})") from e
    except UnicodeDecodeError as e:
        raise TrainingConfigError(f"config {path}: not UTF-8 text") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TrainingConfigError(f"config {path}: not valid YAML{where}") from e
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise TrainingConfigError(f"config {path}: must be a mapping of settings, not {type(doc).__name__}")
    settings: dict[str, Any] = {}
    for key, value in doc.items():
        name = _normal(str(key))
        if name not in known or name == "config":
            raise TrainingConfigError(f"config {path}: unknown setting {key!r} (known: {', '.join(sorted(known - {'config'}))})")
        if name == "target_modules" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        settings[name] = value
    return settings
