#!/usr/bin/env bash
# The torch floor: install the lowest torch release the package supports (pyproject's `torch>=`) in a
# virtual environment of its own (.venv-floor/, reused when present), then import smmf and run a fast
# subset of the tests on it (the optimizer contract, the golden replay, the hand-computed vectors, the
# backends, torch's generic optimizer tests, non-finite gradients). Needs no [cli] extra. CI runs it
# after the main suite; it fails if any of these tests fails.
#
# The floor is the oldest torch this project can install and test here: torch 2.13.0's CPU build lies
# on this machine's disk (pip's find-links takes it); older releases on PyPI are CUDA builds that pull
# several GB of nvidia-* packages, so they are not tested and not claimed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_FLOOR="2.13.0"
VENV="${FLOOR_VENV:-.venv-floor}"

if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install "torch==$TORCH_FLOOR" numpy pytest hypothesis expecttest
pip_install --no-deps -e .

"$PY" - "$TORCH_FLOOR" <<'EOF'
import sys

import torch

floor = sys.argv[1]
print(f"torch floor: {torch.__version__} (python {sys.version.split()[0]})")
if torch.__version__.split("+")[0] != floor:
    sys.exit(f"expected torch {floor}, got {torch.__version__}")
EOF
"$PY" -c "import smmf; print('import smmf: ok', smmf.__version__)"

tests=(
    tests/test_optim_contract.py
    tests/test_golden.py
    tests/test_hand_vectors.py
    tests/test_backends.py
    tests/test_torch_generic.py
    tests/test_nonfinite.py
)
"$PY" -m pytest -q -p no:cacheprovider "${tests[@]}" "$@"
