#!/usr/bin/env bash
# Install everything the tests need into .venv, then run lint, type checks and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The real servers the tests start their own instances of (Debian packages): PostgreSQL 15's
# binaries and Redis; and Debian's chromium, which the dashboard test drives through Playwright
# (no browser download). Installed only when missing, and only where apt-get can run.
need=()
[ -x /usr/lib/postgresql/15/bin/pg_dump ] || need+=(postgresql-15)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q "${need[@]}" >/dev/null || {
      apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; }
  else
    echo "missing: ${need[*]} (install them: apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/pytest -q "$@"
