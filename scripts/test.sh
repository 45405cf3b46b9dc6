#!/usr/bin/env bash
# Install adapterhub with its test extras into .venv and run the whole test suite.
source "$(dirname "$0")/_env.sh" "[test]"
# The web page test drives headless Chromium (Debian's package); it skips if Chromium is absent.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "chromium could not be installed: the browser test will be skipped"
fi
exec python -m pytest "$@"
