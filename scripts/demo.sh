#!/usr/bin/env bash
# Install adapterhub into .venv and run the main job on the embedded tiny base model.
source "$(dirname "$0")/_env.sh" ""
exec adapterhub demo "$@"
