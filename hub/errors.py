"""Every failure the hub reports, so callers (CLI, HTTP server) can map each to a message or status.

The classes also inherit from the matching builtin (``KeyError``, ``ValueError``, ...) so code that
does not know about adapterhub can still catch them sensibly.
"""

from __future__ import annotations

__all__ = [
    "AdapterBusy",
    "AdapterHubError",
    "AdapterNotFound",
    "AuthError",
    "ConcurrentModification",
    "DigestMismatch",
    "IncompatibleBase",
    "InvalidAdapter",
    "InvalidName",
    "InvalidReference",
    "MergeError",
    "ObjectMissing",
    "PermissionDenied",
    "RegistryCorrupt",
    "RemoteError",
    "TrainingConfigError",
    "TrainingDataError",
    "TrainingInterrupted",
    "UnsupportedAdapter",
]


class AdapterHubError(Exception):
    """Root of every error raised on purpose by adapterhub; its message is one line for a person."""


# --- input -----------------------------------------------------------------------------------


class InvalidAdapter(AdapterHubError, ValueError):
    """An adapter folder is missing files, has unreadable JSON or tensors, or contradicts itself."""


class UnsupportedAdapter(InvalidAdapter):
    """The adapter is valid PEFT but of a kind adapterhub does not store (e.g. ``peft_type: IA3``)."""


class InvalidName(AdapterHubError, ValueError):
    """An adapter name, tag or file path that could escape the store or confuse references."""


class InvalidReference(AdapterHubError, ValueError):
    """A reference string (``name``, ``name:tag``, ``name@3``, ``name@sha256:...``) that does not parse."""


class IncompatibleBase(AdapterHubError, ValueError):
    """An adapter whose tensors do not fit the base model's modules (another base, or a wrong shape)."""


class TrainingDataError(AdapterHubError, ValueError):
    """A training or evaluation data file with a malformed row; the message names file and line."""


class TrainingConfigError(AdapterHubError, ValueError):
    """Training settings that cannot work: a bad hyper-parameter, a missing base, an unknown target module."""


class TrainingInterrupted(AdapterHubError):
    """Training stopped by a signal after saving a checkpoint; ``--resume`` continues from it."""

    def __init__(self, message: str, *, checkpoint: str = "") -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class MergeError(AdapterHubError, ValueError):
    """A merge that cannot be done as asked (unknown method, mismatched weights or ranks, ...)."""


# --- lookup ----------------------------------------------------------------------------------


class AdapterNotFound(AdapterHubError, KeyError):
    """A reference that names no adapter, version, tag or digest in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "adapter not found"


# --- storage ---------------------------------------------------------------------------------


class DigestMismatch(AdapterHubError, ValueError):
    """Bytes whose sha256 is not the one recorded: a corrupted object or a tampered upload."""

    def __init__(self, message: str, *, expected: str = "", actual: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class ObjectMissing(AdapterHubError, FileNotFoundError):
    """An object the index references is absent from the content-addressed store."""


class RegistryCorrupt(AdapterHubError):
    """``registry.json`` cannot be read or has a schema this version does not know."""


class ConcurrentModification(AdapterHubError):
    """The registry lock could not be taken in time (another writer holds it)."""


# --- serving ---------------------------------------------------------------------------------


class AdapterBusy(AdapterHubError):
    """Every adapter slot is held by running requests, or an adapter to unload is in use; retry later."""


# --- remote ----------------------------------------------------------------------------------


class RemoteError(AdapterHubError):
    """A remote hub answered with an error or could not be reached; carries the HTTP status."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(RemoteError, PermissionError):
    """Missing or wrong credentials (HTTP 401)."""


class PermissionDenied(RemoteError, PermissionError):
    """Valid credentials without the scope the operation needs (HTTP 403)."""
