"""The installed distribution: one import name, every source module inside it, nothing else.

pyproject.toml lists its packages by hand (setuptools' finder cannot map hub/ onto ``adapterhub``), so
this builds the real wheel from a copy of the sources and checks it against the folders on disk: a
subpackage left out of the list, a template not shipped or a second top-level name fails here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each folder of the repository and the import path it installs as (pyproject's package-dir).
PACKAGE_DIRS = {"hub": "adapterhub", "cli": "adapterhub/cli", "server": "adapterhub/server"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    for folder in PACKAGE_DIRS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), str(src)], check=True, capture_output=True)
    (built,) = out.glob("adapterhub-*.whl")
    with zipfile.ZipFile(built) as zf:
        yield zf


def _expected_files() -> set[str]:
    """Every module and template in the package folders, at the path the wheel must hold it."""
    files = set()
    for folder, target in PACKAGE_DIRS.items():
        for path in (REPO / folder).rglob("*"):
            if path.suffix in {".py", ".html"} and "__pycache__" not in path.parts:
                files.add(f"{target}/{path.relative_to(REPO / folder).as_posix()}")
    return files


def test_wheel_installs_only_adapterhub(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert top == {"adapterhub"}
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["adapterhub"]


def test_wheel_holds_every_source_file(wheel: zipfile.ZipFile) -> None:
    missing = _expected_files() - set(wheel.namelist())
    assert not missing, f"not in the wheel (add the package to pyproject's packages list): {sorted(missing)}"


def test_console_command_points_into_the_namespace(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "adapterhub = adapterhub.cli.main:cli" in wheel.read(entry_points).decode()


def test_import_and_command_in_a_fresh_interpreter() -> None:
    """The editable install the scripts make resolves the same names the wheel ships."""
    code = "import adapterhub, adapterhub.cli.main, adapterhub.server; print(adapterhub.__name__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert run.stdout.strip() == "adapterhub"
    cmd = Path(sys.executable).parent / "adapterhub"
    assert subprocess.run([str(cmd), "--version"], capture_output=True, text=True, check=True).stdout.startswith(
        "adapterhub")
