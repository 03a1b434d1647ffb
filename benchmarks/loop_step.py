"""Time ``optimizer.step()`` inside a real training loop: ``smmf compare``'s tasks, forward and backward
between steps.

``smmf bench`` times steps back to back on fixed gradients, where the host's caches stay warm. In
training, each step comes after a forward and a backward pass, and a small model's step is then mostly
host work run from cold caches (on the 2-core CPU at commit 7038242, SMMF's step on the digits CNN took
0.16 ms back to back and 0.39 ms in the loop: docs/benchmarks.md). This runs ``smmf compare``'s own
training run (its model, batches and warm-up-cosine schedule, at one peak lr and a short budget) for each
optimizer in turn, ``--rounds`` times round-robin in one process, and prints each run's median step time
(steps 10 onward), the figure ``smmf compare`` reports, without its search: a fraction of the time, for
before/after comparisons.

    python benchmarks/loop_step.py                                   # digits and text, adam and smmf
    python benchmarks/loop_step.py --tasks text --optimizers adam,smmf,smmf8 --steps 300
"""

from __future__ import annotations

import argparse
import statistics

import torch

from smmf.commands import registry
from smmf.commands.bench_worker import machine
from smmf.commands.compare_search import TIMING_WARMUP, RunSpec, train_one
from smmf.commands.compare_tasks import TASKS

CPU = RunSpec(device=torch.device("cpu"), progress=False)


def step_ms(task_name: str, optimizer: str, steps: int, lr: float) -> float:
    """The median ``optimizer.step()`` time, in ms, over steps 10 onward of one training run: ``smmf
    compare``'s own run (:func:`smmf.commands.compare_search.train_one`), scored on validation after."""
    result, _ = train_one(TASKS[task_name](steps, 0, CPU.device), optimizer, lr, 0, steps, CPU)
    return result.step_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,text", help="comma-separated, from: " + ", ".join(TASKS))
    parser.add_argument("--optimizers", default="adam,smmf", help="comma-separated, as smmf compare's")
    parser.add_argument("--steps", type=int, default=200, help="training steps a run (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each optimizer, round-robin (default 3)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    args = parser.parse_args()
    tasks, optimizers = args.tasks.split(","), args.optimizers.split(",")
    unknown = [t for t in tasks if t not in TASKS] + [o for o in optimizers if o not in registry.OPTIMIZERS]
    if unknown:
        parser.error(f"unknown task or optimizer: {unknown[0]!r}")
    if args.steps <= TIMING_WARMUP or args.rounds < 1:
        parser.error(f"--steps must exceed {TIMING_WARMUP} and --rounds be at least 1")
    print(f"# {machine('cpu', None)}; torch {torch.__version__}; {args.steps} steps a run, lr {args.lr:g}")
    print("| task | optimizer | step() ms, each round | median | x first optimizer |")
    print("| --- | --- | --- | ---: | ---: |")
    for task in tasks:
        rounds: dict[str, list[float]] = {name: [] for name in optimizers}
        for _ in range(args.rounds):
            for name in optimizers:
                rounds[name].append(step_ms(task, name, args.steps, args.lr))
        first = statistics.median(rounds[optimizers[0]])
        for name, values in rounds.items():
            cells = " ".join(f"{v:.3f}" for v in values)
            median = statistics.median(values)
            print(f"| {task} | {name} | {cells} | {median:.3f} | {median / first:.2f} |")


if __name__ == "__main__":
    main()
