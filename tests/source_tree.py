"""The product's source files as the structure tests read them: paths, module names, imports.

Read from the files with ``ast``, never by importing them, so a check of what a module imports
does not depend on what happens to be installed or already loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Each folder of the repository and the package it installs as (pyproject's package-dir).
PACKAGES = {"hub": "adapterhub", "cli": "adapterhub.cli", "server": "adapterhub.server"}


def source_files(folder: str) -> list[Path]:
    """Every ``.py`` file under ``folder`` (``hub``, ``server/engine/lora``...), repo-relative, sorted."""
    return sorted(p.relative_to(REPO) for p in (REPO / folder).rglob("*.py"))


def product_modules() -> list[Path]:
    """The modules that carry code of their own: every source file but ``__init__.py`` and ``__main__.py``."""
    return [p for top in PACKAGES for p in source_files(top) if p.name not in ("__init__.py", "__main__.py")]


def module_name(path: Path) -> str:
    """``server/http/wsgi.py`` -> ``adapterhub.server.http.wsgi`` (a package's ``__init__.py``: the package)."""
    top, *rest = path.with_suffix("").parts
    if rest and rest[-1] == "__init__":
        rest.pop()
    return ".".join([PACKAGES[top], *rest])


def _is_own_module(name: str) -> bool:
    """Whether ``name`` is a module or package of this repository (``adapterhub.server.engine.lora``)."""
    for top, package in sorted(PACKAGES.items(), key=lambda kv: -len(kv[1])):
        if name == package or name.startswith(package + "."):
            base = REPO / top / Path(*name[len(package) :].split(".")[1:])
            return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()
    return False


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it: at module level, inside functions, under
    ``TYPE_CHECKING``, and through ``importlib.import_module`` with a literal name. Relative imports
    are resolved; ``from pkg import mod`` counts ``pkg.mod`` as well when ``mod`` is a module of ours.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse((REPO / path).read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names
                         if _is_own_module(f"{module}.{alias.name}"))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
            found.add(node.args[0].value)
    return found


def within(module: str, prefix: str) -> bool:
    """Whether ``module`` is ``prefix`` or inside it (``flask.json`` is within ``flask``)."""
    return module == prefix or module.startswith(prefix + ".")
