#!/usr/bin/env bash
# Sets up what the tests need (venv and packages, a redis-server binary) and runs the whole suite.
# The suite starts and stops its own redis-server, Celery worker and uvicorn on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest -q "$@"
