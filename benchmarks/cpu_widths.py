"""Time the C++ backend's step (smmf.cpp_backend) by the width of the matrix it views each tensor as.

The step's inner loop runs along a row: for 1-bit signs in 8 runs (planes) of m / 8 elements, so a
tensor's cost a parameter depends on m as much as on its size, and a model of small tensors (ResNet-50's
3x3 convolutions view as 192 x 192 to 768 x 768) runs at the speed of its short runs. Each row steps
enough square tensors of one width to make at least 2**20 parameters, so that the step's fixed host cost
is a small part of the time; the figure is nanoseconds a parameter (median of torch.utils.benchmark's
blocked_autorange), on one thread unless --threads says otherwise.

    python benchmarks/cpu_widths.py                        # widths 64 to 1536, 1-bit, 8-bit and beta=None
    python benchmarks/cpu_widths.py --widths 192,768 --threads 2
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any

import torch
from torch.utils.benchmark import Timer

from smmf import SMMF
from smmf.commands.bench_worker import machine
from smmf.signpack import row_bytes

VARIANTS: dict[str, dict[str, Any]] = {
    "1-bit": {},
    "8-bit": {"sign_bits": 8},
    "beta=None": {"beta": None, "growth_rate": None},
}
PARAMETERS_A_ROW = 1 << 20


def ns_a_parameter(width: int, options: dict[str, Any]) -> float:
    """The median step time of enough width x width tensors to make PARAMETERS_A_ROW, a parameter."""
    count = math.ceil(PARAMETERS_A_ROW / width**2)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(width, width)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = SMMF(params, lr=1e-3, backend="cpp", **options)
    for _ in range(3):
        opt.step()
    median = Timer("opt.step()", globals={"opt": opt}).blocked_autorange(min_run_time=0.5).median
    return median / (count * width**2) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="64,128,192,256,384,512,768,1024,1536", help="comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        parser.error(f"--widths {args.widths!r}: expected comma-separated integers")
    if args.threads < 1 or any(w < 1 for w in widths):
        parser.error("--threads and every width must be at least 1")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # SMMF's notes on unused options, once per optimizer
    print(f"{machine('cpu', args.threads)}; torch {torch.__version__}")
    print(f"| width m (sign bytes a row) | {' | '.join(f'{v}, ns a param' for v in VARIANTS)} |")
    print(f"| ---: | {' | '.join('---:' for _ in VARIANTS)} |")
    for width in widths:
        times = [f"{ns_a_parameter(width, options):.2f}" for options in VARIANTS.values()]
        print(f"| {width} ({row_bytes(width)}) | {' | '.join(times)} |")


if __name__ == "__main__":
    main()
