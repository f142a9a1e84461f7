#!/usr/bin/env bash
# Sets up what the tests need (venv and packages, Debian's redis-server and chromium) and runs the whole
# suite. The suite starts and stops its own redis-server, Celery worker and uvicorn on free loopback ports,
# and drives /usr/bin/chromium headless through Playwright (which never downloads a browser of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest -q "$@"
