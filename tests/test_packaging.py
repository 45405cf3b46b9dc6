"""The installed distribution: one import name, every source module inside it, nothing else.

pyproject.toml lists its packages by hand (setuptools' finder cannot map hub/ onto ``adapterhub``), so
this builds the real wheel from a copy of the sources and checks it against the folders on disk: a
subpackage left out of the list, a template not shipped or a second top-level name fails here.
"""

from __future__ import annotations

import os
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
    """Every module, template and kernel source in the package folders, at the path the wheel must hold it."""
    files = set()
    for folder, target in PACKAGE_DIRS.items():
        for path in (REPO / folder).rglob("*"):
            if path.suffix in {".py", ".html", ".c"} and "__pycache__" not in path.parts:
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


def _torch_requirement():
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [r for r in map(Requirement, deps) if r.name == "torch"]
    return torch


def test_torch_requirement_is_a_range_that_keeps_a_users_torch() -> None:
    """A pin would make `pip install adapterhub` replace a CUDA machine's torch (and clash with vLLM's)."""
    from importlib.metadata import version

    spec = _torch_requirement().specifier
    installed = version("torch")  # 2.13.0+cpu, what scripts/_env.sh installs
    for admitted in ("2.6.0", "2.9.1", "2.13.0", installed):
        assert spec.contains(admitted), admitted
    for refused in ("2.5.1", "3.0.0"):
        assert not spec.contains(refused), refused


def _fake_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel of distribution ``name`` holding only its metadata: what pip's resolver reads."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: adapterhub-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}.dist-info/RECORD,,\n"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name_in_zip, text in files.items():
            zf.writestr(name_in_zip, text)
        zf.writestr(f"{dist}.dist-info/RECORD", record)
    return path


def _plan(tmp: Path, adapterhub_wheel: Path, index: Path, installed_torch: str) -> dict:
    """What `pip install adapterhub` would do in a fresh venv whose torch is ``installed_torch``:
    pip's own resolver, offline, against ``index`` (``--report`` of a ``--dry-run``)."""
    import json
    from importlib.metadata import version

    from packaging.requirements import Requirement

    # This machine's pip configuration (its wheel folders, indexes, constraints) stays out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    venv = tmp / f"venv-{installed_torch}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--disable-pip-version-check"]
    own = tmp / f"torch-{installed_torch}"
    own.mkdir()
    subprocess.run([*pip, "install", "-q", "--no-index", str(_fake_wheel(own, "torch", installed_torch))],
                   check=True, capture_output=True, env=env)
    # Every other dependency, at the version this environment has (each satisfies its requirement).
    with zipfile.ZipFile(adapterhub_wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in zf.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    for req in map(Requirement, requires):
        if req.marker is None and req.name != "torch" and not list(index.glob(f"{req.name.replace('-', '_')}-*")):
            _fake_wheel(index, req.name, version(req.name))
    report = tmp / f"report-{installed_torch}.json"
    subprocess.run([*pip, "install", "--dry-run", "--no-index", "--find-links", str(index), "--report", str(report),
                    "-q", str(adapterhub_wheel)], check=True, capture_output=True, env=env)
    return json.loads(report.read_text())


def test_pip_install_keeps_an_installed_torch_in_range(wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    """The index offers torch 2.13.0 (the CPU build's version); a venv that already has torch 2.9.0
    keeps it, while one with torch 3.0.0 (out of range) would get 2.13.0: the check can fail."""
    built = tmp_path / Path(wheel.filename).name
    shutil.copy(wheel.filename, built)
    index = tmp_path / "index"
    index.mkdir()
    _fake_wheel(index, "torch", "2.13.0")

    def installs(installed_torch: str) -> dict[str, str]:
        plan = _plan(tmp_path, built, index, installed_torch)
        return {item["metadata"]["name"]: item["metadata"]["version"] for item in plan["install"]}

    kept = installs("2.9.0")
    assert "adapterhub" in kept and "torch" not in kept
    assert installs("3.0.0")["torch"] == "2.13.0"
