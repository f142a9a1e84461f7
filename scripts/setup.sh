#!/usr/bin/env bash
# Idempotent setup of a fresh machine: a Python 3.11 venv in .venv with geoloc and its test extras.
# torch is pinned here (not in pyproject, which takes a range) because this exact pair lies on the
# machine's disk: a looser pin makes pip download multi-GB CUDA builds, and PyPI's torchvision fails to
# import beside the disk's older torch wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
VPY=.venv/bin/python
stamp=.venv/.geoloc-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/geoloc ]; then
    exit 0
fi
pip_install() {  # quiet, without the notes some pip configurations print for every missing local index
    "$VPY" -m pip install -qq --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}
pip_install --upgrade pip
"$VPY" -c "import torch, torchvision" 2>/dev/null || pip_install $TORCH_PIN
pip_install -e ".[test]"
echo "$want" > "$stamp"
