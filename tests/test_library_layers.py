"""Dependencies point one way: the library (``hub/``, the package ``adapterhub``) never imports the
server, Flask or waitress, not even inside a function; the server and the CLI import the library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("adapterhub.server", "adapterhub.cli", "flask", "waitress", "werkzeug", "click")


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) \
                in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.append((node.lineno, str(node.args[0].value)))
    return out


def test_the_library_imports_no_front_end():
    found = [f"{path.relative_to(ROOT)}:{line} {name}" for path in sorted((ROOT / "hub").rglob("*.py"))
             for line, name in _imports(ast.parse(path.read_text()))
             if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert found == []


def test_a_moved_name_says_where_it_went():
    import adapterhub

    try:
        adapterhub.start_engine
    except AttributeError as e:
        assert str(e) == "adapterhub.start_engine moved to adapterhub.server: from adapterhub.server import start_engine"
    else:
        raise AssertionError("adapterhub.start_engine still resolves")


def test_importing_the_server_package_loads_neither_torch_nor_flask():
    code = ("import sys; from adapterhub.server import start_engine; "
            "print(sorted(m for m in ('torch', 'transformers', 'flask', 'waitress') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
