#!/usr/bin/env bash
# Install adapterhub into .venv and run the main job on SmolLM2-135M-Instruct (--base tiny: the embedded tiny base).
source "$(dirname "$0")/_env.sh" ""
exec adapterhub demo "$@"
