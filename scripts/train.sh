#!/usr/bin/env bash
# The SMMF paper's CIFAR-100 recipe (the reference repository's scripts/train.sh), via `smmf train`:
# ResNet-50 from scratch, CIFAR-100 resized to 224 with random flip and 15-degree rotation, batch 128,
# 200 epochs, cosine schedule with hard restarts and 100 warm-up steps stepped per iteration, seed 0;
# SMMF lr 1e-3, weight decay 5e-4 (decoupled), decay_rate -0.8, growth_rate 0.999.
# The reference example stores the sign in 8 bits (smmf8); `--optimizer smmf` (1-bit) gives the same
# updates with an eighth of the sign memory. Extra arguments override these (argparse keeps the last),
# e.g. `scripts/train.sh --resume` or `scripts/train.sh --data-dir /datasets --optimizer adam`.
set -euo pipefail
exec smmf train \
  --model resnet50 --dataset cifar100 --data-dir "${DATA_DIR:-./data}" --image-size 224 \
  --optimizer smmf8 --lr 1e-3 --weight-decay 5e-4 --decay-rate -0.8 --growth-rate 0.999 \
  --batch-size 128 --epochs 200 --warmup-steps 100 --num-cycles 1 --seed 0 \
  --out "${OUT:-runs/resnet50-cifar100-smmf8}" \
  "$@"
