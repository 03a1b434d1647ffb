#!/usr/bin/env bash
# The lent GPU machine's torch and Triton, here, before spending device time on them: the whole suite (the
# main run, then the interpreter run) on the versions that machine has (the device library's KINDS.md, read
# 2026-11: torch 2.11.0, Triton 3.6.0, torchvision 0.26.0), in a virtual environment of its own
# (.venv-device/, reused), with the package taken from src/ as benchmarks/gpu_check.sh takes it there.
# Triton 3.6 compiles the kernels for sm_90 as that machine will (tests/test_triton_compile.py) and lays out
# some blocks unlike Triton 3.8. Not part of CI: about 5 GB, and some 12 minutes on 2 cores.
#   bash scripts/device_stack.sh                 # both runs
#   bash scripts/device_stack.sh tests/test_triton_compile.py   # the main run's pytest arguments instead
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="${DEVICE_TORCH:-2.11.0}" TRITON="${DEVICE_TRITON:-3.6.0}" TORCHVISION="${DEVICE_TORCHVISION:-0.26.0}"
VENV="${DEVICE_VENV:-.venv-device}"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
PY="$VENV/bin/python"
# the cli and test extras, less torch itself (pyproject's torch>= would replace the pinned one)
extras="$("$PY" -c 'import tomllib; e = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print("\n".join(d for d in e["cli"] + e["test"] if not d.startswith(("torch>", "torchvision"))))')"
# numpy<2.4: Triton 3.6's interpreter cannot run loops with tensor bounds under numpy 2.4 (tests/interpreter says so)
mapfile -t deps <<<"$extras"
"$PY" -m pip install --quiet --disable-pip-version-check "torch==$TORCH" "triton==$TRITON" \
    "torchvision==$TORCHVISION" "numpy<2.4" "${deps[@]}"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$PY" -m pytest -q -p no:cacheprovider "${@:-tests}"
if [ $# -eq 0 ]; then
    TRITON_INTERPRET=1 "$PY" -m pytest -q -p no:cacheprovider tests/interpreter
fi
