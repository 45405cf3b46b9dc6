"""What moving the serving engine out of the library left for users: the old name says where it went,
and importing the server package stays light (no import of the library's front ends at all is
checked by tests/test_import_graph.py)."""

from __future__ import annotations

import subprocess
import sys


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
