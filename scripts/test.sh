#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs): the main run, and beside it the Triton backend's
# tests under Triton's interpreter on CPU tensors, in a process of their own (TRITON_INTERPRET=1 must be
# set before Triton is imported, and would slow every other Triton user in the process). The interpreter
# is single-threaded Python, so on a machine of two cores the two runs share it in less time than one
# after the other; its report follows the main run's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The two runs split the cores: each gets half of them as torch's (OpenMP's) threads. A pool as wide as
# the machine in each run has its threads spin-waiting on cores the other run holds: on two cores the
# `smmf compare` test took 187 s so, and 21 s with one thread a run. tests/test_cpp_backend.py sets its
# own thread counts, so the C++ backend's threaded path is tested whatever this gives.
cores="$(nproc 2>/dev/null || echo 2)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / 2 > 1 ? cores / 2 : 1 ))}"
interpreter_log="$(mktemp)"
TRITON_INTERPRET=1 python -m pytest -q -p no:cacheprovider tests/interpreter >"$interpreter_log" 2>&1 &
interpreter=$!
trap 'kill "$interpreter" 2>/dev/null || true; rm -f "$interpreter_log"' EXIT
main_status=0
python -m pytest -q "$@" || main_status=$?
interpreter_status=0
wait "$interpreter" || interpreter_status=$?
echo "== tests/interpreter (TRITON_INTERPRET=1) =="
cat "$interpreter_log"
if [ "$main_status" -ne 0 ] || [ "$interpreter_status" -ne 0 ]; then
    echo "test.sh: main run exit $main_status, interpreter run exit $interpreter_status" >&2
    exit 1
fi
