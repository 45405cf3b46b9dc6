#!/usr/bin/env bash
# Install adapterhub with its test extras into .venv and run the whole test suite.
source "$(dirname "$0")/_env.sh" "[test]"
# The web page test drives headless Chromium (Debian's package); it skips if Chromium is absent.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "chromium could not be installed: the browser test will be skipped"
fi
# The shared-index tests start a throwaway PostgreSQL cluster (initdb/pg_ctl); they skip without one.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
    || echo "postgresql could not be installed: the shared-index tests will be skipped"
fi
exec python -m pytest "$@"
