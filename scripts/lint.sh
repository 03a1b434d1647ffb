#!/usr/bin/env bash
# Lint and type checks (what CI runs before the tests; pre-commit runs the same): ruff's linter, ruff's
# formatter in check mode and mypy on the package and benchmarks/. Any finding fails the script. Versions:
# the `test` extra (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
ruff check . || status=1
ruff format --check . || status=1
mypy src benchmarks || status=1
exit "$status"
