#!/usr/bin/env bash
# The prepared GPU checks, in stages; name one or more, run in the order given. A session has 15 minutes
# of device time, each machine start (1-2 minutes) included, and the machine goes back after 30 s idle:
#   bash benchmarks/gpu_check.sh tests          # CUDA tests of the Triton backend (240 s at most: each swept launch
#                                               # compiles and runs against eager)
#   bash benchmarks/gpu_check.sh train-small    # whole training steps and step() alone, ResNet-50 and
#                                               # GPT-2, four optimizers (issue 8; 190 s at most)
#   bash benchmarks/gpu_check.sh train-7b       # the same for the 7B shape, three optimizers (110 s)
#   bash benchmarks/gpu_check.sh train-cl       # ResNet-50 with channels-last weights and images, AdamW(fused)
#                                               # and SMMF (100 s): its 3x3 weights stepped through their placement
#   bash benchmarks/gpu_check.sh memory-7b      # peak memory and time of a 7B step four ways (issue 9; 130 s)
#   bash benchmarks/gpu_check.sh memory-small   # the same memory table for the 3B and 1B shapes (200 s)
#   bash benchmarks/gpu_check.sh sweep          # launch settings of passes 1 and 0 timed (benchmarks/pass1_sweep.py;
#                                               # 260 s); the fastest for bf16 and fp32 go to $OUT/pass{1,0}-best-*.txt
#   bash benchmarks/gpu_check.sh tuned          # train-small and train-7b, AdamW(fused) and SMMF, with the sweep's
#                                               # fastest launches (SMMF_TRITON_PASS1 and _PASS0; 330 s); ResNet-50
#                                               # and GPT-2 in two rounds of fresh processes, order reversed in the
#                                               # second: an H100's step() moved 13% from one process to the next
#   bash benchmarks/gpu_check.sh ncu            # Nsight Compute's reports: pass 1, 7B layers, two settings; pass 0,
#                                               # GPT-2 (180 s)
#   bash benchmarks/gpu_check.sh compare        # smmf compare's GPU text task for Adam and SMMF (560 s)
#   bash benchmarks/gpu_check.sh main           # tests train-small train-7b memory-7b (timeouts: 11 minutes, more
#                                               # than one device call may run: name the stages over two calls)
# A bench stage takes its optimizers after a colon, to save time: train-7b:adamw-fused,smmf
# Stage times measured on an H200 on 2026-11-26: CUDA tests 78 s; ResNet-50 or GPT-2 with four
# optimizers about 80 s each (the inductor path, not run here, adds 1-2 minutes of compilation per
# workload); the 7B shape with three optimizers 82 s; the 7B memory table 88 s, 3B and 1B 149 s.
# Since then the memory bench runs five steps a cell instead of two, and both benches profile one more
# step (GPU busy time): a few seconds a cell, within the timeouts above.
# Each optimizer and model runs in a fresh process; tables are rewritten after every row, so a stage
# cut short by its timeout still leaves what it measured in $OUT (or runs/). A timeout interrupts the
# bench (SIGINT), which stops its worker; leftover workers are killed before the next stage.
# The GPU machine receives the repository only: for the float64 golden replay on CUDA, copy the
# trajectories into the ignored folder .golden/ first and name it in the device call's carry:
#   mkdir -p .golden && cp ../shared/golden/official_trajectories.npz .golden/
set -uo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash benchmarks/gpu_check.sh STAGE[:OPTIMIZERS]... (tests train-small train-7b train-cl memory-7b memory-small sweep tuned ncu compare main)"
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
stages=()
for stage in "$@"; do
    case "${stage%%:*}" in
    main) stages+=(tests train-small train-7b memory-7b) ;;
    tests | train-small | train-7b | train-cl | memory-7b | memory-small | sweep | tuned | ncu | compare) stages+=("$stage") ;;
    *) echo "unknown stage '$stage'; $usage" >&2; exit 2 ;;
    esac
done
out="${OUT:-runs}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -f .golden/official_trajectories.npz ]; then export SMMF_GOLDEN="$PWD/.golden/official_trajectories.npz"; fi
py="$(command -v python3 || command -v python)"
log="$out/gpu-check.log"

{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$log"

# [s]: the pattern must not match this script's own command line
stop_workers() { pkill -9 -f '[s]mmf.commands' || true; }
best_of() { # best_of pass1|pass0: the sweep's fastest settings as SMMF_TRITON_PASS1/0 take them, 2=...,4=...
    local setting=""
    [ -s "$out/$1-best-bf16.txt" ] && setting="2=$(cat "$out/$1-best-bf16.txt")"
    [ -s "$out/$1-best-fp32.txt" ] && setting="${setting:+$setting,}4=$(cat "$out/$1-best-fp32.txt")"
    echo "$setting"
}
bench() { # bench SECONDS ARGS...: one smmf bench run with a timeout
    local seconds="$1"
    shift
    timeout -s INT -k 10 "$seconds" "$py" -m smmf bench --device cuda "$@" 2>&1 | tee -a "$log"
    stop_workers
}

for stage in "${stages[@]}"; do
    picked="${stage#*:}"
    optimizers() { if [ "$picked" != "$stage" ]; then echo "$picked"; else echo "$1"; fi; }
    case "${stage%%:*}" in
    tests) # those of the inductor path (the step of before) are left out to save device time
        timeout -s INT -k 5 240 "$py" -m pytest -q -p no:cacheprovider --durations=15 -k "not inductor" tests/test_cuda.py 2>&1 |
            tee -a "$log"
        ;;
    train-small)
        bench 190 --mode train --set resnet50,gpt2 --steps 10 --warmup 3 \
            --optimizers "$(optimizers adamw-fused,smmf,smmf8,adamw)" --out "$out/bench-train-cuda"
        ;;
    train-7b)
        bench 110 --mode train --set llama-7b --steps 5 --warmup 2 --optimizers "$(optimizers adamw-fused,smmf,smmf8)" \
            --out "$out/bench-train-llama-7b-cuda"
        ;;
    train-cl)
        bench 100 --mode train --set resnet50-cl --steps 10 --warmup 3 --optimizers "$(optimizers adamw-fused,smmf)" \
            --out "$out/bench-train-resnet50-cl-cuda"
        ;;
    memory-7b)
        bench 130 --mode memory --set llama-7b --optimizers "$(optimizers adamw-bf16,smmf-backward,smmf,adamw-fp32)" \
            --out "$out/bench-memory-llama-7b-cuda"
        ;;
    memory-small)
        bench 200 --mode memory --set llama-3b,llama-1b \
            --optimizers "$(optimizers adamw-bf16,smmf-backward,smmf,adamw-fp32)" --out "$out/bench-memory-cuda"
        ;;
    sweep) # pass 1: today's; 64 and 72 registers (32 and 28 warps an SM), 64 pipelined 2-3 stages or in row
           # chunks of 16 (a row's neighbouring 64-byte fp32 runs read close together); 128 registers
           # pipelined 2-4 stages, wide, wide pipelined 2-3. Pass 0 (timed first): today's; folded into pass 1's
           # queue (smmf.triton_queue), each tensor's checks just before its tiles or a tensor ahead; each tile's share
           # split in 4 programs; 40 registers (12 programs an SM) alone, pipelined 2-3 stages, and split in 4; 8 warps at
           # 32 pipelined; bf16's 4096-element blocks on 8 warps. Then the fastest of each together, as tuned runs
           # them: a pass 0 that steps wrong or slower beside the fastest pass 1 falls back to today's. A setting
           # that cannot run (out of shared memory, say) is reported in the table and the sweep goes on
        for workload in llama-layers:bf16 gpt2:fp32; do
            timeout -s INT -k 5 130 "$py" benchmarks/pass1_sweep.py --workload "${workload%%:*}" \
                --configs 4:96:4:0:16,4:64:4:0:16,4:72:4:0:16,4:64:4:0:16:0:2,4:64:4:0:16:0:3,4:64:4:0:16:16,4:128:4:0:16:0:2,4:128:4:0:16:0:3,4:128:4:0:16:0:4,4:128:4:0:32,4:128:4:0:32:0:2,4:128:4:0:32:0:3 \
                --pass0-configs 4:0:2048:1,4:0:2048:1:1:1,4:0:2048:1:1:2,4:0:2048:1:4,4:40:2048:1,4:40:2048:2,4:40:2048:3,4:40:2048:3:4,8:32:2048:3,8:40:4096:3 \
                --best "$out/pass1-best-${workload#*:}.txt" --best-pass0 "$out/pass0-best-${workload#*:}.txt" 2>&1 |
                tee -a "$log"
        done
        ;;
    tuned) # bf16 tensors (2 bytes) from the 7B layers' sweep, fp32 (4 bytes) from GPT-2's
        tuned_pass1="$(best_of pass1)" tuned_pass0="$(best_of pass0)"
        [ -n "$tuned_pass1$tuned_pass0" ] || { echo "tuned: no $out/pass*-best-*.txt; run the sweep stage first" | tee -a "$log"; continue; }
        echo "SMMF_TRITON_PASS1=$tuned_pass1 SMMF_TRITON_PASS0=$tuned_pass0" | tee -a "$log"
        export SMMF_TRITON_PASS1="$tuned_pass1" SMMF_TRITON_PASS0="$tuned_pass0"
        bench 200 --mode train --set resnet50,gpt2 --steps 10 --warmup 3 --rounds 2 \
            --optimizers "$(optimizers adamw-fused,smmf)" --out "$out/bench-train-cuda-tuned"
        bench 130 --mode train --set llama-7b --steps 5 --warmup 2 \
            --optimizers "$(optimizers adamw-fused,smmf)" --out "$out/bench-train-llama-7b-cuda-tuned"
        unset SMMF_TRITON_PASS1 SMMF_TRITON_PASS0
        ;;
    ncu) # pass1_sweep.py's 4th step_tiles launch: the setting's own (after two warm-up steps and the default
         # launch's checked step), today's launch and the pipelined one
        ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
        [ -n "$ncu" ] || { echo "ncu: not found" | tee -a "$log"; continue; }
        # bytes the memory moved against the 32-byte sectors the SMs asked L2 for: fetches wider than asked
        dram_against_requested=dram__bytes_read.sum,dram__bytes_write.sum
        dram_against_requested+=,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_write.sum
        # and pass 0 (its default launch) on GPT-2's fp32 gradients: 0.26 of the 1.39 ms of its step in the H100 run
        for profiled in step_tiles:llama-layers:4:96:4:0:16 step_tiles:llama-layers:4:128:4:0:16:0:3 \
            check_gradients:gpt2:4:96:4:0:16; do
            kernel="${profiled%%:*}" rest="${profiled#*:}"
            workload="${rest%%:*}" config="${rest#*:}"
            report="$out/ncu-$kernel-$workload-${config//:/-}.txt"
            timeout -s INT -k 5 60 "$ncu" --kernel-name "$kernel" --launch-skip 3 --launch-count 1 \
                --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
                --section SchedulerStats --section MemoryWorkloadAnalysis --section InstructionStats \
                --section SourceCounters --metrics "$dram_against_requested" \
                "$py" benchmarks/pass1_sweep.py --workload "$workload" --configs "$config" >"$report" 2>&1
            tail -n 60 "$report" | tee -a "$log"
        done
        ;;
    compare)
        timeout -s INT -k 10 560 "$py" -m smmf compare --device cuda --tasks text-gpu --optimizers adam,smmf \
            --out "$out/compare-cuda" 2>&1 | tee -a "$log"
        ;;
    esac
done
