#!/usr/bin/env bash
# The package as users install it: build the wheel, install it into a fresh virtualenv
# outside the checkout, and run the installed `interest` there: --help, init, status and
# a small pipeline run in the new project folder. Everything it creates is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
work=$(mktemp -d /tmp/interest-wheel-XXXXXX)
cleanup() {
    [ -x "$work/venv/bin/interest" ] && [ -d "$work/shop/.pgdata" ] && INTEREST_HOME="$work/shop" "$work/venv/bin/interest" stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

rm -rf build  # setuptools would pack stale modules left in build/ by an earlier build
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
wheel=$(ls "$work"/dist/*.whl)
echo "built $(basename "$wheel")"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$TORCH_SPEC"
"$work/venv/bin/python" -m pip install --quiet "$wheel"

cd "$work"   # outside the checkout: nothing of the source tree is importable from here
interest="$work/venv/bin/interest"
"$interest" --help >/dev/null
"$interest" init shop
export INTEREST_HOME="$work/shop"
"$interest" status
"$interest" run --users 60 --items 120 --no-train
echo "wheel check passed: installed CLI ran init, status and the pipeline outside the checkout"
