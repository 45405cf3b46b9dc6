"""Dependencies run one way: the library never reaches into its front ends, and packages that share
a piece do not import each other.

Every import counts, wherever it is written (module level, inside a function, under
``TYPE_CHECKING``): an import deferred to call time is still a dependency, only a slower one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from source_tree import imports_of, module_name, source_files, within

# What the library (hub/, the package ``adapterhub``) must never import: its front ends and the
# frameworks only they use.
FRONT_ENDS = ("adapterhub.server", "adapterhub.cli", "flask", "werkzeug", "waitress", "click")


# server/engine/lora/, lowest first: a module may import only modules of a lower rank. The plan is
# data the kernels read; the layers call the kernels; the loader writes into the layers' slots; the
# slot bank assembles them.
LORA_LAYERS = {
    "row_plan": 0,
    "native_delta": 0,
    "kernels": 1,
    "layer": 2,
    "loader": 3,
    "slot_bank": 4,
}
LORA_PACKAGE = "adapterhub.server.engine.lora"


def _front_end_imports(path: Path) -> set[str]:
    return {m for m in imports_of(path) if any(within(m, f) for f in FRONT_ENDS)}


def test_the_import_reader_sees_every_kind_of_import():
    """The reader this file relies on: a call-time import, a TYPE_CHECKING one, a relative
    ``from . import module`` and a module-level one are all found."""
    serve = imports_of(Path("cli/serve_cmd.py"))
    assert "adapterhub.server.serving" in serve  # inside the command
    engine = imports_of(Path("server/engine/engine.py"))
    assert "adapterhub.registry_protocol" in engine  # under TYPE_CHECKING
    assert "adapterhub.server.engine.adapters.picker" in engine  # module level, relative
    assert "adapterhub.server.engine.lora.native_delta" in imports_of(Path("server/engine/lora/kernels.py"))


@pytest.mark.parametrize("path", source_files("hub"), ids=str)
def test_library_never_imports_a_front_end(path: Path):
    found = _front_end_imports(path)
    assert not found, (
        f"{path} imports {sorted(found)}: the library must import none of {', '.join(FRONT_ENDS)} "
        f"(move the code that needs them into the front end, or take what it needs as an argument)")


def test_train_never_imports_data():
    """The data tools write the rows training reads, so ``adapterhub.data`` imports
    ``adapterhub.train`` (its row shapes) and never the other way; what both use (ROUGE-L) lives
    above them, in ``adapterhub.rouge``."""
    back = {str(p): sorted(m for m in imports_of(p) if within(m, "adapterhub.data"))
            for p in source_files("hub/train")}
    assert not {p: ms for p, ms in back.items() if ms}, "hub/train imports adapterhub.data"
    assert any(within(m, "adapterhub.train") for p in source_files("hub/data") for m in imports_of(p)), \
        "hub/data no longer uses adapterhub.train: update this test's statement of the direction"


def test_lora_modules_import_downwards_only():
    modules = {p: module_name(p).rpartition(".")[2] for p in source_files("server/engine/lora")
               if p.name != "__init__.py"}
    unranked = sorted(set(modules.values()) - set(LORA_LAYERS))
    assert not unranked, f"give {unranked} a rank in LORA_LAYERS"
    upward = []
    for path, name in modules.items():
        for imported in imports_of(path):
            if within(imported, LORA_PACKAGE) and imported != LORA_PACKAGE:
                other = imported[len(LORA_PACKAGE) + 1 :].split(".")[0]
                if LORA_LAYERS[other] >= LORA_LAYERS[name]:
                    upward.append(f"{path} imports {other}")
    assert not upward, upward
