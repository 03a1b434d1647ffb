#!/usr/bin/env bash
# One prepared GPU session (a few minutes on an H100): the CUDA tests, then whole training steps and
# step() alone side by side, each optimizer in fresh processes. Results land in $OUT (or runs/).
# Run from the repository root: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 240 python -m pytest -q -x tests/test_cuda.py 2>&1 | tail -15
timeout 420 python -m smmf bench --mode train --device cuda --steps 10 --warmup 3 \
    --optimizers adamw-fused,adamw,smmf,smmf8,smmf-inductor --out "$out/bench-train-cuda" 2>&1 | tail -40
timeout 420 python -m smmf bench --mode memory --device cuda --out "$out/bench-memory-cuda" 2>&1 | tail -20
