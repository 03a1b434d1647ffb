#!/usr/bin/env bash
# The prepared GPU checks, in stages that each fit one device call; speed and memory together fit a
# session's 15 minutes of device time with the machine's start (at most 7.2 + 4.2 minutes by their timeouts):
#   bash benchmarks/gpu_check.sh speed    # CUDA tests, then whole training steps and step() alone (issue 8)
#   bash benchmarks/gpu_check.sh memory   # peak memory and time of a 7B/3B/1B training step (issue 9)
#   bash benchmarks/gpu_check.sh compare  # smmf compare's GPU text task for Adam and SMMF, if time is left
# Each optimizer and model runs in a fresh process; tables are rewritten after every row, so a stage
# cut short by its timeout still leaves what it measured in $OUT (or runs/). Run from any directory.
# The GPU machine receives the repository only: for the float64 golden replay on CUDA, copy the
# trajectories into the ignored folder .golden/ first and name it in the device call's carry:
#   mkdir -p .golden && cp ../shared/golden/official_trajectories.npz .golden/
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${1:-}"
case "$stage" in speed | memory | compare) ;; *)
    echo "usage: bash benchmarks/gpu_check.sh speed|memory|compare" >&2
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

case "$stage" in
speed)
    # the CUDA tests of the Triton backend; those of the inductor path (the step of before) are left
    # out to save device time (`pytest tests/test_cuda.py` runs all)
    timeout 100 "$py" -m pytest -q -p no:cacheprovider -k "not inductor" tests/test_cuda.py 2>&1 | tee -a "$log"
    # smmf-inductor last of each workload: the compiled torch step of before, for launches before and after
    timeout 330 "$py" -m smmf bench --mode train --device cuda --steps 10 --warmup 3 \
        --optimizers adamw-fused,adamw,smmf,smmf8,smmf-inductor --out "$out/bench-train-cuda" 2>&1 | tee -a "$log"
    ;;
memory)
    # the 7B shape first: it is what issue 9 asks about; the table lists models smallest first
    timeout 250 "$py" -m smmf bench --mode memory --device cuda --set llama-7b,llama-3b,llama-1b \
        --out "$out/bench-memory-cuda" 2>&1 | tee -a "$log"
    ;;
compare)
    timeout 560 "$py" -m smmf compare --device cuda --tasks text-gpu --optimizers adam,smmf \
        --out "$out/compare-cuda" 2>&1 | tee -a "$log"
    ;;
esac
