"""docs/architecture.md is a true map: every product module listed once, nothing listed that is gone.

The rule the page states and this file checks: a module is named by its path from the repository
root, in backticks (`server/http/lora_names.py`), on a list line of its own in "Every module"
(``- `path` — its job``). Any backticked path on the page that starts with ``hub/``, ``cli/`` or
``server/`` (a module, a folder, a glob) must exist.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from source_tree import PACKAGES, REPO, product_modules

DOC = REPO / "docs" / "architecture.md"
LISTING = "## Every module"
_LISTED = re.compile(r"^- `([^`]+\.py)` — \S", re.MULTILINE)
_NAMED = re.compile(r"`((?:%s)/[^`\s]*)`" % "|".join(PACKAGES))


def _listing() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert LISTING in text, f"{DOC.name} lost its {LISTING!r} section"
    return text.split(LISTING, 1)[1].split("\n## ", 1)[0]


def _exists(named: str) -> bool:
    if any(c in named for c in "*?["):
        return any(REPO.glob(named))
    return (REPO / named.rstrip("/")).exists()


def test_every_module_is_listed_once():
    listed = Counter(_LISTED.findall(_listing()))
    missing = [str(p) for p in product_modules() if str(p) not in listed]
    assert not missing, f"docs/architecture.md does not list {len(missing)} modules: {missing}"
    twice = sorted(p for p, n in listed.items() if n > 1)
    assert not twice, f"listed more than once: {twice}"


def test_every_listed_entry_is_a_product_module():
    """A listed ``__init__.py`` or a file outside the packages is not a module this page maps."""
    modules = {str(p) for p in product_modules()}
    stray = sorted(set(_LISTED.findall(_listing())) - modules)
    assert not stray, f"listed but not a product module: {stray}"


def test_every_path_named_exists():
    named = set(_NAMED.findall(DOC.read_text(encoding="utf-8")))
    assert any(n.endswith(".py") for n in named), "the page names no module path: is the pattern right?"
    gone = sorted(n for n in named if not _exists(n))
    assert not gone, f"docs/architecture.md names paths that do not exist: {gone}"


def test_the_listing_rule_reads_the_page_as_written():
    """The pattern finds the sample line the page's own rule quotes, and the check finds a path that
    is gone: so a passing run means the page was read, not that nothing matched."""
    assert _LISTED.findall("- `server/http/lora_names.py` — vLLM's served LoRA names\n") == [
        "server/http/lora_names.py"]
    assert not _exists("server/http/no_such_module.py")
    assert _exists("server/engine/native/*.c") and _exists("hub/index/")
    assert Path("server/http/lora_names.py") in product_modules()
