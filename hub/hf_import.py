"""Import a PEFT adapter from any Hugging Face Hub-compatible endpoint: ``hf://org/repo[@revision]``.

The endpoint is ``$HF_ENDPOINT`` (huggingface.co by default), so the same code imports from the
public Hub, a mirror, or another adapterhub. The revision is pinned to the commit the endpoint
reports before anything downloads, only the adapter's own files are fetched, and the folder goes
through the registry's normal push (validation, base check, content addressing). Importing the
same bytes again returns the existing version instead of adding an identical one.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapter_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_adapter_folder
from .errors import AdapterHubError, AdapterNotFound, InvalidReference, RemoteError
from .prompt_template import PROMPT_TEMPLATE_FILE
from .refs import validate_name
from .registry import AdapterVersion, folder_entries, manifest_digest

__all__ = ["HF_SCHEME", "HfSource", "parse_hf_url", "import_from_hub"]

HF_SCHEME = "hf://"
_FILES = [ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROMPT_TEMPLATE_FILE, "README.md"]


@dataclass(frozen=True)
class HfSource:
    repo_id: str
    revision: str | None

    @property
    def default_name(self) -> str:
        """The repo id itself: registry names take the Hub's ``org/repo`` form."""
        return self.repo_id


def parse_hf_url(url: str) -> HfSource:
    """``hf://org/repo`` or ``hf://repo``, optionally ``@revision``."""
    if not url.startswith(HF_SCHEME):
        raise InvalidReference(f"{url!r} is not an hf:// reference (hf://org/repo[@revision])")
    repo_id, _, revision = url[len(HF_SCHEME):].partition("@")
    parts = repo_id.split("/")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise InvalidReference(f"{url!r}: expected hf://org/repo or hf://repo, optionally @revision")
    try:
        for p in parts:
            validate_name(p)
    except AdapterHubError as e:
        raise InvalidReference(f"{url!r}: {e}") from e
    return HfSource(repo_id, revision or None)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def import_from_hub(
    url: str,
    registry: Any,
    *,
    name: str | None = None,
    task: str | None = None,
    base: str | None = None,
    token: str | None = None,
) -> AdapterVersion:
    """Download the adapter at ``url`` and store it in ``registry`` (local or remote) as ``name``."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    source = parse_hf_url(url)
    name = validate_name(name or source.default_name)
    endpoint = _endpoint()
    try:
        commit = HfApi(endpoint=endpoint, token=token).model_info(source.repo_id, revision=source.revision).sha
        with tempfile.TemporaryDirectory(prefix="adapterhub-import-") as tmp:
            folder = Path(
                snapshot_download(source.repo_id, revision=commit, local_dir=tmp, allow_patterns=_FILES,
                                  endpoint=endpoint, token=token)
            )
            return _store(registry, folder, source, commit, name=name, task=task, base=base)
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        where = endpoint or "https://huggingface.co"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RemoteError(f"cannot import {url} from {where}: {first_line}") from e


def _store(registry: Any, folder: Path, source: HfSource, commit: str | None, *, name: str, task: str | None,
           base: str | None) -> AdapterVersion:
    adapter = read_adapter_folder(folder)
    digest = manifest_digest(folder_entries(adapter))
    try:
        existing = [v for v in registry.list(name=name) if v.digest == digest]
    except AdapterNotFound:
        existing = []
    if existing:
        return existing[-1]
    return registry.push(
        folder,
        name=name,
        task=task or str((adapter.settings and adapter.settings.task_type) or "imported").lower(),
        base=base,
        description=f"imported from {HF_SCHEME}{source.repo_id}",
        lineage=[{"source": f"{HF_SCHEME}{source.repo_id}", "revision": commit, "endpoint": _endpoint()}],
    )
