"""The one table of error codes: every ``error.code`` an adapterhub server answers or streams.

Each row is a ``WireCode``: the code string of the JSON body ``{"error": {"message", "type",
"code"}}``, its HTTP status, its OpenAI ``type``, and whether sending the same request again can
help (``retryable``). The servers raise rows by name (``ApiError(error_codes.NOT_LOADED, message)``
in ``adapterhub.server.http.errors``), never a code string with a hand-written status, and the
clients read the same rows back: ``errors.ERROR_TABLE`` says which row each hub exception class
answers with (so ``remote`` raises the class again), and ``retry`` retries the statuses of the
retryable rows. It lives in the library, free of flask, because the clients need it without the
server.

The rows are grouped by who answers them. A code of Hugging Face's protocol keeps Hugging Face's
spelling (``RepoNotFound``): ``huggingface_hub`` picks its exception class by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["WireCode", "ERROR_CODES", "RETRYABLE_STATUSES", "http_error_row"]

# OpenAI's error types (``error.type``): a request the client can fix, a refusal for load, a key
# without the scope, and a failure of the server's own.
_REQUEST = "invalid_request_error"
_RATE_LIMIT = "rate_limit_error"
_PERMISSION = "permission_error"
_SERVER = "server_error"


@dataclass(frozen=True)
class WireCode:
    """How one error travels over HTTP.

    Args:
        code: the ``error.code`` string of the JSON body (unique in ``ERROR_CODES``).
        http_status: the answer's HTTP status, a 4xx or 5xx.
        type: OpenAI's ``error.type`` of the body.
        retryable: whether sending the same request again, later, can succeed: the server did not
            act on it and refused only for now (busy, stopping); a bad or unknown request is final.
    """

    code: str
    http_status: int
    type: str
    retryable: bool = False


_ROWS: list[WireCode] = []


def _row(code: str, http_status: int, type_: str, *, retryable: bool = False) -> WireCode:
    row = WireCode(code, http_status, type_, retryable)
    _ROWS.append(row)
    return row


# --- hub errors: one row per ``AdapterHubError`` class (``errors.ERROR_TABLE``) ------------------
INVALID_REQUEST = _row("invalid_request", 400, _REQUEST)
INVALID_ADAPTER = _row("invalid_adapter", 400, _REQUEST)
UNSUPPORTED_ADAPTER = _row("unsupported_adapter", 400, _REQUEST)
INVALID_SAFETENSORS = _row("invalid_safetensors", 400, _REQUEST)
INVALID_NAME = _row("invalid_name", 400, _REQUEST)
INVALID_REFERENCE = _row("invalid_reference", 400, _REQUEST)
INCOMPATIBLE_BASE = _row("incompatible_base", 409, _REQUEST)
INVALID_BASE_FILE = _row("invalid_base_file", 400, _REQUEST)
INVALID_TRAINING_DATA = _row("invalid_training_data", 400, _REQUEST)
INVALID_TRAINING_CONFIG = _row("invalid_training_config", 400, _REQUEST)
# A run stopped by a signal after its checkpoint: running it again (``--resume``) goes on.
TRAINING_INTERRUPTED = _row("training_interrupted", 503, _SERVER, retryable=True)
INVALID_MERGE = _row("invalid_merge", 400, _REQUEST)
NOT_FOUND = _row("not_found", 404, _REQUEST)  # also werkzeug's 404 for an unknown URL
DIGEST_MISMATCH = _row("digest_mismatch", 400, _REQUEST)
OBJECT_MISSING = _row("object_missing", 404, _REQUEST)
REGISTRY_CORRUPT = _row("registry_corrupt", 500, _SERVER)
BUSY = _row("busy", 503, _SERVER, retryable=True)  # the registry lock was not taken: nothing written
PARENT_MISMATCH = _row("parent_mismatch", 412, _REQUEST)
DISK_FULL = _row("disk_full", 507, _SERVER)  # until someone frees space, asking again fails again
ADAPTER_BUSY = _row("adapter_busy", 503, _SERVER, retryable=True)
ADAPTER_TOO_LARGE = _row("adapter_too_large", 422, _REQUEST)
ADAPTER_IN_USE = _row("adapter_in_use", 409, _REQUEST)
REMOTE_ERROR = _row("remote_error", 502, _SERVER)
ENDPOINT_ERROR = _row("endpoint_error", 502, _SERVER)
ALREADY_LOADED = _row("already_loaded", 400, _REQUEST)
UNAUTHORIZED = _row("unauthorized", 401, _REQUEST)
FORBIDDEN = _row("forbidden", 403, _REQUEST)

# --- the HTTP servers themselves (werkzeug's and waitress's refusals, named by their reason) ------
BAD_REQUEST = _row("bad_request", 400, _REQUEST)
METHOD_NOT_ALLOWED = _row("method_not_allowed", 405, _REQUEST)
REQUEST_ENTITY_TOO_LARGE = _row("request_entity_too_large", 413, _REQUEST)
REQUEST_HEADER_FIELDS_TOO_LARGE = _row("request_header_fields_too_large", 431, _REQUEST)
INTERNAL_SERVER_ERROR = _row("internal_server_error", 500, _SERVER)  # waitress: the app failed before answering
NOT_IMPLEMENTED = _row("not_implemented", 501, _REQUEST)  # a transfer coding the client can choose not to send
# Every worker thread busy and the waiting room full (``server.http.dispatcher``): not yet read.
SERVER_BUSY = _row("server_busy", 429, _RATE_LIMIT, retryable=True)
INTERNAL_ERROR = _row("internal_error", 500, _SERVER)  # an unexpected exception; also a failed batch

# --- request bodies and uploads -----------------------------------------------------------------
INVALID_JSON = _row("invalid_json", 400, _REQUEST)
INVALID_VALUE = _row("invalid_value", 400, _REQUEST)
INVALID_TYPE = _row("invalid_type", 400, _REQUEST)
INVALID_FIELD = _row("invalid_field", 400, _REQUEST)
MISSING_FIELD = _row("missing_field", 400, _REQUEST)
UNSUPPORTED_FIELD = _row("unsupported_field", 400, _REQUEST)
BODY_TOO_LARGE = _row("body_too_large", 413, _REQUEST)  # the OpenAI API's body bound (admission)
TOO_LARGE = _row("too_large", 413, _REQUEST)  # the hub's bounds on bodies, objects and commit lines
TOO_MANY = _row("too_many", 400, _REQUEST)
LENGTH_REQUIRED = _row("length_required", 411, _REQUEST)
LENGTH_MISMATCH = _row("length_mismatch", 400, _REQUEST)
SHORT_BODY = _row("short_body", 400, _REQUEST)
RANGE_NOT_SATISFIABLE = _row("range_not_satisfiable", 416, _REQUEST)
INVALID_PATH = _row("invalid_path", 400, _REQUEST)
INVALID_DIGEST = _row("invalid_digest", 400, _REQUEST)
INVALID_MANIFEST = _row("invalid_manifest", 400, _REQUEST)
OBJECTS_MISSING = _row("objects_missing", 409, _REQUEST)
LOCAL_BASE = _row("local_base", 400, _REQUEST)

# --- serving keys (``server.http.api_keys``) ----------------------------------------------------
MISSING_API_KEY = _row("missing_api_key", 401, _REQUEST)
INVALID_API_KEY = _row("invalid_api_key", 401, _REQUEST)
ADMIN_KEY_REQUIRED = _row("admin_key_required", 403, _PERMISSION)

# --- the OpenAI-compatible API, before a generation runs ----------------------------------------
NO_MODEL = _row("no_model", 503, _SERVER, retryable=True)  # a hub without an engine, or one starting
CONTEXT_LENGTH_EXCEEDED = _row("context_length_exceeded", 400, _REQUEST)
PROMPT_TOO_LONG = _row("prompt_too_long", 400, _REQUEST)
TOO_MANY_GENERATIONS = _row("too_many_generations", 400, _REQUEST)
NO_CHAT_TEMPLATE = _row("no_chat_template", 400, _REQUEST)
NOT_LOADED = _row("not_loaded", 404, _REQUEST)
QUEUE_FULL = _row("queue_full", 429, _RATE_LIMIT, retryable=True)  # the engine's queue, or every replica's
REPLICA_UNAVAILABLE = _row("replica_unavailable", 503, _SERVER, retryable=True)
NOT_SUPPORTED_BY_FLEET = _row("not_supported_by_fleet", 400, _REQUEST)
INVALID_GRAMMAR = _row("invalid_grammar", 400, _REQUEST)  # a structured-output constraint that does not compile
GRAMMAR_TOO_LARGE = _row("grammar_too_large", 400, _REQUEST)  # a constraint over its size bound

# --- streamed mid-answer: the engine ended a request (``server.engine.request.ErrorCode``) ------
# Non-finite logits come from the adapter the request chose (a scale or weights that overflow),
# not from the server: a 422. A sampling or detokenizing failure once the parameters passed
# validation is a defect of ours (or of the tokenizer we ship): a 500 monitoring should see.
NON_FINITE_LOGITS = _row("non_finite_logits", 422, _REQUEST)
SAMPLING_FAILED = _row("sampling_failed", 500, _SERVER)
DETOKENIZE_FAILED = _row("detokenize_failed", 500, _SERVER)
SHUTTING_DOWN = _row("shutting_down", 503, _SERVER, retryable=True)  # tokens nobody kept: no lasting effect

# --- the Hugging Face Hub protocol (``server.http.hf_*``) ---------------------------------------
REPO_NOT_FOUND = _row("RepoNotFound", 404, _REQUEST)
REVISION_NOT_FOUND = _row("RevisionNotFound", 404, _REQUEST)
ENTRY_NOT_FOUND = _row("EntryNotFound", 404, _REQUEST)
REPO_EXISTS = _row("RepoExists", 409, _REQUEST)
# Empty repos are bounded; one comes free when a commit fills it or it is deleted.
TOO_MANY_REPOS = _row("too_many_repos", 429, _REQUEST, retryable=True)
UNSUPPORTED_REPO_TYPE = _row("unsupported_repo_type", 400, _REQUEST)
UNSUPPORTED_VISIBILITY = _row("unsupported_visibility", 400, _REQUEST)
UNSUPPORTED_REVISION = _row("unsupported_revision", 400, _REQUEST)
UNSUPPORTED_PULL_REQUEST = _row("unsupported_pull_request", 400, _REQUEST)
XET_UNSUPPORTED = _row("xet_unsupported", 400, _REQUEST)
UNSUPPORTED_OPERATION = _row("unsupported_operation", 400, _REQUEST)
UNSUPPORTED_TRANSFER = _row("unsupported_transfer", 400, _REQUEST)
UNSUPPORTED_HASH = _row("unsupported_hash", 400, _REQUEST)
INVALID_UPLOAD_LINK = _row("invalid_upload_link", 403, _REQUEST)
# Git LFS answers a batch's refused object inside its 200, by status alone (``{"code": 422}``): an
# empty object is committed inline instead, one over the hub's bound not at all (``TOO_LARGE``).
EMPTY_OBJECT = _row("empty_object", 422, _REQUEST)

ERROR_CODES: Mapping[str, WireCode] = {row.code: row for row in _ROWS}

# What a client retries on: the statuses of the retryable rows (429 and 503). The status decides,
# not the code, so that a proxy's busy page, which carries no code, is waited out the same way.
RETRYABLE_STATUSES = frozenset(row.http_status for row in _ROWS if row.retryable)


def http_error_row(code: str, http_status: int) -> WireCode:
    """The row of a refusal werkzeug or waitress made on its own (``code`` is its reason phrase in
    snake case, e.g. ``method_not_allowed``). One the table lacks (a status no route of ours can
    cause) is answered as the plain client or server error of its class, never with a code
    outside the table."""
    row = ERROR_CODES.get(code)
    if row is not None:
        return row
    return BAD_REQUEST if http_status < 500 else INTERNAL_SERVER_ERROR
