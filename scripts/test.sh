#!/usr/bin/env bash
# Install adapterhub with its test extras into .venv and run the whole test suite.
source "$(dirname "$0")/_env.sh" "[test]"
exec python -m pytest "$@"
