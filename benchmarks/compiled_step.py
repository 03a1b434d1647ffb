"""Time ``optimizer.step()`` called as it is and through ``torch.compile``, PyTorch's recipe for
compiling the step of its own optimizers (tutorial "(beta) Compiling the optimizer with torch.compile").

SMMF's step runs outside compiled graphs (``smmf.functional.outside_graphs``), so both ways should take
the same time; torch's ``Adam(foreach=True)``, whose step dynamo traces and inductor fuses, is timed
beside it. Each step follows a forward and backward pass of an MLP, with gradients set to None
between steps as ``zero_grad()`` does, so that every step meets new gradient tensors, as in training.
A row gives the time the first ``--warmup`` steps took together (compilation, and any recompilation:
dynamo recompiles a traced function whose guards fail, up to its recompile limit) and the median
``step()`` of the steps after them.

    python benchmarks/compiled_step.py [--optimizers smmf,adam] [--width 128] [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from smmf.commands import registry
from smmf.commands.bench_worker import machine


def _model(width: int) -> nn.Module:
    """An MLP, 64 -> width -> width -> 10, the same for every optimizer."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def time_step(name: str, compiled: bool, width: int, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the first ``warmup`` steps, median seconds of a step after them) of optimizer
    ``name``, plain or through torch.compile, each step after a forward and backward pass."""
    torch._dynamo.reset()
    model = _model(width)
    opt = registry.build(name, model.parameters(), lr=1e-3, foreach=True)
    step = torch.compile(opt.step) if compiled else opt.step
    data = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    seconds = []
    for _ in range(warmup + steps):
        opt.zero_grad(set_to_none=True)
        model(data).square().mean().backward()
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return sum(seconds[:warmup]), statistics.median(seconds[warmup:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", default="smmf,adam", help="comma-separated, as smmf bench's")
    parser.add_argument("--width", type=int, default=128, help="the MLP's hidden width")
    parser.add_argument("--warmup", type=int, default=10, help="first steps, timed together (compilation)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps of each optimizer and way")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    if unknown := [n for n in names if n not in registry.OPTIMIZERS]:
        parser.error(f"--optimizers: unknown {', '.join(unknown)} (expected some of {', '.join(registry.OPTIMIZERS)})")
    if min(args.width, args.warmup, args.steps) < 1:
        parser.error("--width, --warmup and --steps must be >= 1")
    print(f"# {machine('cpu', None)}; torch {torch.__version__}")
    print(f"| optimizer | `step()` called | first {args.warmup} steps, s | later steps, median ms |")
    print("| --- | --- | ---: | ---: |")
    for name in names:
        for compiled in (False, True):
            first, later = time_step(name, compiled, args.width, args.warmup, args.steps)
            way = "torch.compile(opt.step)()" if compiled else "opt.step()"
            # significant digits: a few warm steps of a small model take well under a millisecond
            print(f"| {name} | `{way}` | {first:.3g} | {later * 1e3:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
