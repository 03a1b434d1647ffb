#!/usr/bin/env bash
# Re-run the benchmarks shown in docs/benchmarks.md and refresh its charts.
#   bash benchmarks/run_all.sh                      # CPU: resnet50 and gpt2
#   DEVICE=cuda bash benchmarks/run_all.sh          # GPU (adds AdamW(fused=True))
#   SETS="mobilenet_v2" bash benchmarks/run_all.sh --threads 1 --rounds 2
# Extra arguments go to every `python -m smmf bench` call. Tables land in runs/bench-<set>-<device>/bench.md
# and are concatenated into runs/bench-<device>.md for pasting into docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
device="${DEVICE:-cpu}"
summary="runs/bench-${device}.md"
mkdir -p runs docs
: > "$summary"
for set in ${SETS:-resnet50 gpt2}; do
    out="runs/bench-${set}-${device}"
    python -m smmf bench --set "$set" --device "$device" --out "$out" "$@"
    cp "$out/bench.png" "docs/benchmarks-${set}-${device}.png"
    { cat "$out/bench.md"; echo; } >> "$summary"
done
echo "tables: $summary; charts: docs/benchmarks-*-${device}.png"
