#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs): the main run, then the Triton backend's tests
# under Triton's interpreter on CPU tensors, in a process of their own (TRITON_INTERPRET=1 must be set
# before Triton is imported, and would slow every other Triton user in the process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m pytest -q "$@"
TRITON_INTERPRET=1 python -m pytest -q tests/interpreter
