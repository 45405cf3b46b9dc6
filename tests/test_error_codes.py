"""The one table of error codes (``adapterhub.error_codes``): its rows are sound, every error the
sources build names one of them, the library reads it without flask, and the servers' own
refusals (werkzeug's, waitress's) answer with rows too."""

from __future__ import annotations

import ast
import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest
from werkzeug.exceptions import ImATeapot

from adapterhub import error_codes
from adapterhub.error_codes import ERROR_CODES, RETRYABLE_STATUSES, WireCode
from adapterhub.errors import ERROR_TABLE
from adapterhub.retry import RETRY_STATUSES
from adapterhub.server.engine.request import ErrorCode
from adapterhub.server.http import openai_api

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("server", "hub", "cli")
OPENAI_TYPES = {"invalid_request_error", "rate_limit_error", "permission_error", "server_error"}
ROWS = {name: row for name, row in vars(error_codes).items() if isinstance(row, WireCode)}


# --- the rows ------------------------------------------------------------------------------------


def test_every_row_has_an_error_status_a_known_type_and_a_unique_code():
    assert len(ROWS) == len(ERROR_CODES), "a row defined outside ERROR_CODES, or two rows with one code"
    assert set(ROWS.values()) == set(ERROR_CODES.values())
    for name, row in ROWS.items():
        assert 400 <= row.http_status < 600, name
        assert row.type in OPENAI_TYPES, name
        assert ERROR_CODES[row.code] is row, name


def test_the_retried_statuses_are_those_of_the_retryable_rows_and_unchanged():
    """Clients retry on the status alone (a proxy's busy page has no code), so a row at a retried
    status must be retryable, and the statuses must stay the 429 and 503 they always were."""
    assert RETRY_STATUSES == RETRYABLE_STATUSES == {429, 503}
    for name, row in ROWS.items():
        assert row.retryable == (row.http_status in RETRYABLE_STATUSES), name


def test_every_hub_error_class_and_engine_failure_answers_with_a_row():
    assert all(ERROR_CODES[row.code] is row for row in ERROR_TABLE.values())
    for code in ErrorCode:
        assert code.row is ERROR_CODES[code.value]
    assert set(openai_api._EVENT_MESSAGES) == set(ErrorCode)  # each streamed failure has its sentence


def test_the_library_reads_the_table_without_flask_or_the_server():
    code = ("import sys, adapterhub.error_codes, adapterhub.errors, adapterhub.retry, adapterhub.remote; "
            "print(sorted(m for m in sys.modules if m == 'flask' or m.startswith('adapterhub.server')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the sources ---------------------------------------------------------------------------------


def _literal(node: ast.AST) -> bool:
    """Whether an expression spells a code or status out (a string or a number in it)."""
    return any(isinstance(n, ast.Constant) and isinstance(n.value, (str, int)) and not isinstance(n.value, bool)
               for n in ast.walk(node))


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _ad_hoc_codes(path: Path) -> list[str]:
    """Each place ``path`` builds an error outside the table: an ``ApiError`` or engine failure whose
    row is spelled out, a ``code=``/``type_=`` keyword with a literal, an ``{"error": {"code": ...}}``
    body with a literal code, or a ``codes.NAME`` that names no row."""
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "codes"
                and node.attr not in ROWS and not callable(getattr(error_codes, node.attr, None))):
            found.append(f"{at}: codes.{node.attr} is no row of the table")
        elif isinstance(node, ast.Call):
            name = _callee(node)
            found += [f"{at}: {name}({kw.arg}=<literal>)" for kw in node.keywords
                      if kw.arg in ("code", "error_code", "type_") and _literal(kw.value)]
            if name in ("ApiError", "RowFailure") and (not node.args or _literal(node.args[0])):
                found.append(f"{at}: {name} built without a row of the table")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "error" and isinstance(value, ast.Dict):
                    found += [f"{at}: an error body with a literal code" for k, v in zip(value.keys, value.values)
                              if isinstance(k, ast.Constant) and k.value == "code" and _literal(v)]
    return found


def test_no_error_is_built_with_a_code_outside_the_table():
    """The issue's count of ad hoc error codes outside the table: 0."""
    files = sorted(p for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 100  # the scan reads the real sources
    found = [offence for p in files for offence in _ad_hoc_codes(p)]
    assert found == [], "\n".join(found)


def test_the_scan_finds_a_code_spelled_out(tmp_path):
    """The scan is not vacuous: each way of writing a code by hand is found."""
    sample = tmp_path / "sample.py"
    sample.write_text('raise ApiError(400, "bad", code="made_up")\n'
                      'ApiError(codes.NO_SUCH_ROW, "x")\n'
                      'RowFailure("nan", "x")\n'
                      'body = {"error": {"message": "x", "code": "made_up"}}\n')
    found = _ad_hoc_codes(sample)
    assert len(found) == 5, found  # the ApiError counts twice: its literal status and its code=


# --- the servers' own refusals -------------------------------------------------------------------


def _get(port: int, method: str, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize(("method", "path", "row"), [
    ("GET", "/api/no/such/route", error_codes.NOT_FOUND),
    ("DELETE", "/health", error_codes.METHOD_NOT_ALLOWED),
])
def test_werkzeugs_refusals_answer_with_their_row(hub, method, path, row):
    status, body = _get(hub.handle.port, method, path)
    assert status == row.http_status
    assert body["error"]["code"] == row.code and body["error"]["type"] == row.type


def test_a_werkzeug_refusal_the_table_lacks_answers_as_its_class_of_error(hub):
    """No route of ours raises a 418; were one to, its answer still names a row, never a new code."""

    def teapot():
        raise ImATeapot()

    hub.counter.app.add_url_rule("/api/test-teapot", view_func=teapot)
    status, body = _get(hub.handle.port, "GET", "/api/test-teapot")
    assert status == 400 and body["error"]["code"] == "bad_request"
    assert body["error"]["type"] == "invalid_request_error"
