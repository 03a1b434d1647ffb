#!/usr/bin/env bash
# Install smmf with everything its CLI and tests use. torch is pinned first so that pip takes the
# build this project is tested with (a plain `torch` requirement would pull a multi-GB CUDA build
# on a machine with none installed); on your own machine install the torch build you want first.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet --disable-pip-version-check -e ".[cli,test]"
