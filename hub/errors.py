"""Every failure the hub reports, and ``ERROR_TABLE``: the row of ``error_codes`` each class answers with.

The classes also inherit from the matching builtin (``KeyError``, ``ValueError``, ...) so code that
does not know about adapterhub can still catch them sensibly. The HTTP server answers an error with
its class's row (``wire_code``) and the remote client turns the row back into the same class
(``error_from_wire``), as ``huggingface_hub`` does in ``hf_raise_for_status``. The rows themselves
(code, status, OpenAI type, retryable) are the one table of ``error_codes``, which also holds the
codes of the HTTP layer that no class stands for.
"""

from __future__ import annotations

import errno
from typing import Mapping

from . import error_codes as codes
from .error_codes import WireCode

__all__ = [
    "AdapterBusy",
    "AdapterInUse",
    "AdapterHubError",
    "AdapterNotFound",
    "AdapterTooLarge",
    "AuthError",
    "ConcurrentModification",
    "DigestMismatch",
    "DiskFull",
    "EndpointError",
    "IncompatibleBase",
    "InvalidBaseFile",
    "InvalidAdapter",
    "InvalidName",
    "InvalidReference",
    "MergeError",
    "NameTaken",
    "ObjectMissing",
    "ParentMoved",
    "PermissionDenied",
    "RegistryCorrupt",
    "RemoteError",
    "TrainingConfigError",
    "TrainingDataError",
    "TrainingInterrupted",
    "UnsupportedAdapter",
    "ERROR_TABLE",
    "WireCode",
    "disk_full",
    "full_disk",
    "error_from_wire",
    "wire_code",
]


class AdapterHubError(Exception):
    """Root of every error raised on purpose by adapterhub; its message is one line for a person.

    ``status`` is the HTTP status of the answer when a remote hub raised the error (``None`` when
    it was raised in this process). ``exit_code`` is what the command line exits with: 1, or 2 for
    an argument that names an unusable file (the code click gives any other bad argument).
    """

    status: int | None = None
    exit_code: int = 1


# --- input -----------------------------------------------------------------------------------


class InvalidAdapter(AdapterHubError, ValueError):
    """An adapter folder is missing files, has unreadable JSON or tensors, or contradicts itself."""


class UnsupportedAdapter(InvalidAdapter):
    """The adapter is valid PEFT but of a kind adapterhub does not store (e.g. ``peft_type: IA3``)."""


class SafetensorsFormatError(InvalidAdapter):
    """A ``.safetensors`` file is malformed (truncated, bad header, byte ranges outside the file)."""


class InvalidName(AdapterHubError, ValueError):
    """An adapter name, tag or file path that could escape the store or confuse references."""


class InvalidReference(AdapterHubError, ValueError):
    """A reference string (``name``, ``name:tag``, ``name@3``, ``name@sha256:...``) that does not parse."""


class IncompatibleBase(AdapterHubError, ValueError):
    """An adapter whose tensors do not fit the base model's modules (another base, or a wrong shape)."""


class InvalidBaseFile(IncompatibleBase):
    """A base model file that is no model: missing, not a GGUF, truncated, or of an architecture
    transformers cannot dequantize. A bad argument, so the command line exits 2."""

    exit_code = 2


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


class ParentMoved(AdapterHubError):
    """A write that names the version it builds on (a Hugging Face commit's ``parentCommit``) found
    another version there: someone wrote in between, and applying it would undo their change."""


class DiskFull(AdapterHubError, OSError):
    """The registry's disk has no room left: nothing was recorded; free space and retry."""


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"


def disk_full(error: BaseException, what: str = "no room to write") -> DiskFull | None:
    """``DiskFull`` when ``error`` is the operating system (``ENOSPC``, ``EDQUOT``) or SQLite
    (``SQLITE_FULL``) saying there is no room left, else ``None``: the one reading of a full disk
    that the CLI, the servers and the index share, so each says the same thing."""
    if isinstance(error, DiskFull):
        return error
    full = (isinstance(error, OSError) and error.errno in _FULL_ERRNOS) or (
        getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL)
    return full_disk(what) if full else None


def full_disk(what: str) -> DiskFull:
    """The one message of a full disk, after ``what`` could not be done."""
    return DiskFull(f"{what}: the disk is full (nothing was changed; free some space and retry)")


# --- serving ---------------------------------------------------------------------------------


class AdapterBusy(AdapterHubError):
    """Every adapter slot is held by running requests (or the bytes of those in use leave no room
    under the bound for one that would fit alone); retry later."""


class AdapterTooLarge(AdapterHubError, ValueError):
    """An adapter bigger than the server's whole adapter memory bound (``--max-adapter-memory``): it
    cannot fit even with nothing else loaded, so retrying is futile (422), unlike ``AdapterBusy``."""


class AdapterInUse(AdapterBusy):
    """An adapter asked to be unloaded while running requests use it: a conflict with the server's
    state (409), where ``AdapterBusy`` is a server out of room for now (503)."""


# --- remote ----------------------------------------------------------------------------------


class NameTaken(InvalidName):
    """A ``lora_name`` a server already serves (vLLM answers 400 unless ``load_inplace``)."""


class EndpointError(AdapterHubError):
    """An OpenAI-compatible endpoint (``adapterhub data self-instruct``'s model) could not be reached
    or refused a request."""


class RemoteError(AdapterHubError):
    """A remote hub answered with an error or could not be reached; carries the HTTP status."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(RemoteError, PermissionError):
    """Missing or wrong credentials (HTTP 401)."""


class PermissionDenied(RemoteError, PermissionError):
    """Valid credentials without the scope the operation needs (HTTP 403)."""


# --- the wire --------------------------------------------------------------------------------


# Every class, once, with its row of the one table (``error_codes``): the hub answers with the row
# and the remote client raises the row's class back, so a caller catches the same exception whether
# the registry is local or remote.
ERROR_TABLE: Mapping[type[AdapterHubError], WireCode] = {
    AdapterHubError: codes.INVALID_REQUEST,
    InvalidAdapter: codes.INVALID_ADAPTER,
    UnsupportedAdapter: codes.UNSUPPORTED_ADAPTER,
    SafetensorsFormatError: codes.INVALID_SAFETENSORS,
    InvalidName: codes.INVALID_NAME,
    InvalidReference: codes.INVALID_REFERENCE,
    IncompatibleBase: codes.INCOMPATIBLE_BASE,
    InvalidBaseFile: codes.INVALID_BASE_FILE,
    TrainingDataError: codes.INVALID_TRAINING_DATA,
    TrainingConfigError: codes.INVALID_TRAINING_CONFIG,
    TrainingInterrupted: codes.TRAINING_INTERRUPTED,
    MergeError: codes.INVALID_MERGE,
    AdapterNotFound: codes.NOT_FOUND,
    DigestMismatch: codes.DIGEST_MISMATCH,
    ObjectMissing: codes.OBJECT_MISSING,
    RegistryCorrupt: codes.REGISTRY_CORRUPT,
    ConcurrentModification: codes.BUSY,
    ParentMoved: codes.PARENT_MISMATCH,
    DiskFull: codes.DISK_FULL,
    AdapterBusy: codes.ADAPTER_BUSY,
    AdapterTooLarge: codes.ADAPTER_TOO_LARGE,
    AdapterInUse: codes.ADAPTER_IN_USE,
    RemoteError: codes.REMOTE_ERROR,
    EndpointError: codes.ENDPOINT_ERROR,
    NameTaken: codes.ALREADY_LOADED,
    AuthError: codes.UNAUTHORIZED,
    PermissionDenied: codes.FORBIDDEN,
}

_CLASS_FOR_CODE: Mapping[str, type[AdapterHubError]] = {wire.code: cls for cls, wire in ERROR_TABLE.items()}


def wire_code(error: AdapterHubError) -> WireCode:
    """The row of the error's most specific class in ``ERROR_TABLE`` (what a hub answers with)."""
    return next(ERROR_TABLE[cls] for cls in type(error).__mro__ if cls in ERROR_TABLE)


def error_from_wire(code: str | None, message: str, *, status: int) -> AdapterHubError:
    """The exception a hub's error answer stands for: the class ``code`` names in ``ERROR_TABLE``,
    or a ``RemoteError`` for codes of the HTTP layer itself (a malformed request, an oversized body)."""
    cls = _CLASS_FOR_CODE.get(code or "", RemoteError)
    error = cls(message)
    error.status = status
    return error
