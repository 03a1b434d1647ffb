#!/usr/bin/env bash
# The prepared GPU checks, in stages that each fit one device call. A session has 15 minutes of device
# time, the machine's start (1-2 minutes) included, and the machine goes back after 30 s idle, so run
# `main` (at most 9.5 minutes by its timeouts) and, at once after it, `memory-small` (3.5 minutes):
#   bash benchmarks/gpu_check.sh main          # CUDA tests; whole training steps and step() alone of
#                                              # ResNet-50, GPT-2 and the 7B shape (issue 8); peak memory
#                                              # and time of a 7B step four ways (issue 9)
#   bash benchmarks/gpu_check.sh memory-small  # the same memory table for the 3B and 1B shapes
#   bash benchmarks/gpu_check.sh compare       # smmf compare's GPU text task for Adam and SMMF
# Stage times measured on an H200 on 2026-11-26: CUDA tests 78 s; ResNet-50 or GPT-2 with four
# optimizers about 80 s each (the inductor path, not run here, adds 1-2 minutes of compilation per
# workload); the 7B shape with three optimizers 82 s; the 7B memory table 88 s, 3B and 1B 149 s.
# Since then the memory bench runs five steps a cell instead of two, and both benches profile one more
# step (GPU busy time): a few seconds a cell, within the timeouts below.
# Each optimizer and model runs in a fresh process; tables are rewritten after every row, so a stage
# cut short by its timeout still leaves what it measured in $OUT (or runs/). A timeout interrupts the
# bench (SIGINT), which stops its worker; leftover workers are killed before the next stage.
# The GPU machine receives the repository only: for the float64 golden replay on CUDA, copy the
# trajectories into the ignored folder .golden/ first and name it in the device call's carry:
#   mkdir -p .golden && cp ../shared/golden/official_trajectories.npz .golden/
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${1:-}"
case "$stage" in main | memory-small | compare) ;; *)
    echo "usage: bash benchmarks/gpu_check.sh main|memory-small|compare" >&2
    exit 2
    ;;
esac
out="${OUT:-runs}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -f .golden/official_trajectories.npz ]; then export SMMF_GOLDEN="$PWD/.golden/official_trajectories.npz"; fi
py="$(command -v python3 || command -v python)"
log="$out/gpu-check-$stage.log"

{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$log"

# [s]: the pattern must not match this script's own command line
stop_workers() { pkill -9 -f '[s]mmf.commands' || true; }
bench() { # bench SECONDS ARGS...: one smmf bench run with a timeout
    local seconds="$1"
    shift
    timeout -s INT -k 10 "$seconds" "$py" -m smmf bench --device cuda "$@" 2>&1 | tee -a "$log"
    stop_workers
}

case "$stage" in
main)
    # the CUDA tests of the Triton backend; those of the inductor path (the step of before) are left
    # out to save device time (`pytest tests/test_cuda.py` runs all)
    timeout -s INT -k 5 100 "$py" -m pytest -q -p no:cacheprovider -k "not inductor" tests/test_cuda.py 2>&1 | tee -a "$log"
    bench 190 --mode train --set resnet50,gpt2 --steps 10 --warmup 3 \
        --optimizers adamw-fused,smmf,smmf8,adamw --out "$out/bench-train-cuda"
    bench 110 --mode train --set llama-7b --steps 5 --warmup 2 --optimizers adamw-fused,smmf,smmf8 \
        --out "$out/bench-train-llama-7b-cuda"
    bench 130 --mode memory --set llama-7b --optimizers adamw-bf16,smmf-backward,smmf,adamw-fp32 \
        --out "$out/bench-memory-llama-7b-cuda"
    ;;
memory-small)
    bench 200 --mode memory --set llama-3b,llama-1b --optimizers adamw-bf16,smmf-backward,smmf,adamw-fp32 \
        --out "$out/bench-memory-cuda"
    ;;
compare)
    timeout -s INT -k 10 560 "$py" -m smmf compare --device cuda --tasks text-gpu --optimizers adam,smmf \
        --out "$out/compare-cuda" 2>&1 | tee -a "$log"
    ;;
esac
