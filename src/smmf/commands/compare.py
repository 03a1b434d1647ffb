"""``smmf compare``: each optimizer at its best learning rate, several seeds, on offline tasks.

Per task and optimizer it searches the learning rate on a validation split, trains the chosen one with
several seeds and reports the test metric as mean ± std, beside the optimizer's state bytes
(``optimizer_state_bytes``: every state tensor, as allocated) and the median time of
``optimizer.step()`` after warm-up. It writes a table, JSON and a figure into an output folder. Offline
by design: scikit-learn's bundled digits, and the Python standard library's own source as text.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from smmf.functional import resolve_backend

from . import registry
from .common import (
    SEED_MAX,
    UsageError,
    check_names,
    check_number,
    check_seed,
    positive_int,
    resolve_device,
    split_names,
    writable_dir,
)
from .compare_report import figure, payload, table
from .compare_search import PRESETS, TIMING_WARMUP, Plan, RunResult, RunSpec, Search, preset_plan, search
from .compare_tasks import TASKS, Task

__all__ = ["COMPARE_NAMES", "warm_up", "compare", "register", "run"]

COMPARE_NAMES: tuple[str, ...] = (*registry.MAIN_NAMES, "smmf-sr")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def warm_up(task: Task, spec: RunSpec, steps: int = 10) -> None:
    """Untimed forward/backward passes on a throwaway model, so that the first optimizer measured does not
    pay for the process's one-off costs (kernel selection, allocator growth) that later ones skip."""
    model = task.model().to(spec.device, spec.dtype)
    for step in range(steps):
        task.loss(model, task.batch(step)).backward()


def _log(task: Task) -> Callable[[RunResult], None]:
    def log(r: RunResult) -> None:
        score = "diverged" if r.diverged else f"val {task.metric} {r.val[task.metric]:.4g}"
        print(f"  {task.name}/{r.optimizer} lr {r.lr:g} seed {r.seed}: {score} ({r.wall_s:.1f} s)", flush=True)

    return log


def _search_task(task_name: str, plan: Plan, seed: int, spec: RunSpec) -> tuple[Task, list[Search]]:
    steps = plan.steps(task_name)
    cache: dict[int, Task] = {}

    def task_for(s: int) -> Task:
        if s not in cache:
            cache[s] = TASKS[task_name](steps, s, spec.device, spec.dtype)
        return cache[s]

    task = task_for(seed)
    warm_up(task, spec)
    seeds = [seed + i for i in range(plan.seeds)]
    print(f"\n## {task.title} ({steps} steps)", flush=True)
    searches = [
        search(task_for, name, plan.center(name), plan, seeds, steps, spec, _log(task)) for name in plan.optimizers
    ]
    print(f"\n{table(task, searches)}", flush=True)
    return task, searches


def _meta(plan: Plan, spec: RunSpec, seed: int, wall: float, preset: str) -> dict[str, Any]:
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "wall_s": wall,
        "preset": preset,
        "searched": plan.describe(),
        "steps": {t: plan.steps(t) for t in plan.tasks},
        "device": str(spec.device),
        "weights": str(spec.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "first_seed": seed,
        "smmf_step": f"{resolve_backend('auto', spec.smmf_fused, spec.device)} backend (step() timing as below)",
        "timing": f"median over steps {TIMING_WARMUP}.. of optimizer.step(), over the chosen point's seeds",
    }


def compare(plan: Plan, seed: int, spec: RunSpec, out: Path, preset: str = "custom") -> dict[str, Any]:
    """Search every optimizer on every task of ``plan``; write results.json, compare.md, compare.png."""
    start = time.perf_counter()
    print(f"searched: {plan.describe()}", flush=True)
    tasks: list[Task] = []
    results: dict[str, list[Search]] = {}
    for task_name in plan.tasks:
        task, results[task_name] = _search_task(task_name, plan, seed, spec)
        tasks.append(task)
    meta = _meta(plan, spec, seed, time.perf_counter() - start, preset)
    report = payload(meta, tasks, results)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    md = [
        f"# smmf compare ({meta['date']}, {meta['device']}, torch {meta['torch']}, {meta['threads']} threads)\n",
        f"Preset `{preset}`, {meta['weights']} weights; searched: {meta['searched']}.\n",
    ]
    for t in tasks:
        md.append(f"## {t.title} ({meta['steps'][t.name]} steps)\n\n{table(t, results[t.name])}\n")
    md.append(f"Wall time: {meta['wall_s']:.0f} s. Step time: {meta['timing']}.\n")
    (out / "compare.md").write_text("\n".join(md))
    figure(tasks, results, out / "compare.png")
    print(f"\nwall time {meta['wall_s']:.0f} s; wrote {out}/results.json, compare.md, compare.png")
    return report


# ---------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare optimizers at their best learning rates on offline tasks (digits CNN, stdlib GPT-2)",
        description=(
            "Search each optimizer's learning rate on a validation split, train the chosen one with several "
            "seeds and report the test metric (mean ± std), optimizer state memory and step time relative to "
            "Adam; write results.json, compare.md and compare.png into --out. Runs offline. Presets: "
            + "; ".join(f"{k}: {', '.join(v.optimizers)} on {', '.join(v.tasks)}" for k, v in PRESETS.items())
        ),
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="what to search (default: gpu on a CUDA device, else quick: about 5 minutes on 2 CPU cores)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="widen the preset: every optimizer, a 5-point grid, 5 seeds everywhere, 2x steps",
    )
    p.add_argument("--optimizers", default=None, help="comma-separated, from: " + ", ".join(COMPARE_NAMES))
    p.add_argument("--tasks", default=None, help="comma-separated, from: " + ", ".join(TASKS))
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="training steps per run (default: " + ", ".join(f"{k} {v.default_steps}" for k, v in TASKS.items()) + ")",
    )
    p.add_argument("--seeds", type=positive_int, default=None, help="seeds at the chosen point (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="train every optimizer at this lr only: no search")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weights' dtype (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="first seed; further seeds count up (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: ./smmf-compare-<date-time>)")
    p.add_argument(
        "--smmf-eager",
        action="store_true",
        help="run SMMF's eager step instead of compiling it (skips the one-off compile; slower steps)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _plan(args: argparse.Namespace, device: torch.device) -> tuple[str, Plan]:
    name, plan = preset_plan(args.preset, device.type == "cuda", args.full)
    if args.optimizers is not None:
        plan = replace(plan, optimizers=tuple(check_names(split_names(args.optimizers), COMPARE_NAMES, "optimizer")))
    if args.tasks is not None:
        plan = replace(plan, tasks=tuple(check_names(split_names(args.tasks), TASKS, "task")))
    if args.steps is not None:
        if args.steps <= TIMING_WARMUP:
            raise UsageError(
                f"--steps: expected at least {TIMING_WARMUP + 1} (the first {TIMING_WARMUP} steps warm up and are "
                f"left out of the step-time medians), got {args.steps}"
            )
        plan = replace(plan, step_scale=1.0, fixed_steps=args.steps)
    if args.seeds is not None:
        plan = replace(plan, seeds=args.seeds)
    if args.lr is not None:
        check_number("--lr", args.lr, 0.0, above=True)
        plan = replace(plan, grid=(0,), extend=0, lr=args.lr)
    return name, plan


def run(args: argparse.Namespace) -> int:
    check_seed(args.seed)
    device = resolve_device(args.device)
    preset, plan = _plan(args, device)
    if args.seed + plan.seeds - 1 > SEED_MAX:
        raise UsageError(f"--seed: {plan.seeds} seeds from {args.seed} run past the largest seed, {SEED_MAX}")
    out = writable_dir(args.out or Path(f"smmf-compare-{datetime.now():%Y%m%d-%H%M%S}"), "--out")
    spec = RunSpec(device, DTYPES[args.dtype], False if args.smmf_eager else None, not args.no_progress)
    print(
        f"smmf compare: {', '.join(plan.tasks)} x {', '.join(plan.optimizers)} on {device}; writing to {out}",
        flush=True,
    )
    compare(plan, args.seed, spec, out, preset)
    return 0
