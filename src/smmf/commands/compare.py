"""``smmf compare``: train one model per task with each optimizer, same seed and data order, and report.

Offline by design: the image task uses scikit-learn's bundled digits, the language-model task the
Python standard library's own source. Per optimizer it measures the final train loss, the held-out
metric, the optimizer's state bytes (``optimizer_state_bytes``: every state tensor, as allocated) and
the median time of ``optimizer.step()`` after warm-up (SMMF's first steps compile its fused kernel),
and writes a table, JSON and a figure into an output folder.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..memory import optimizer_state_bytes
from . import registry
from .common import (
    UsageError,
    check_names,
    check_seed,
    markdown_table,
    positive_int,
    resolve_device,
    split_names,
    writable_dir,
)
from .compare_tasks import TASKS, Task

__all__ = ["RunResult", "train_one", "run_task", "table", "compare", "register", "run"]

TIMING_WARMUP = 10  # steps excluded from step-time medians (compilation, allocator warm-up)


@dataclass
class RunResult:
    """One optimizer on one task."""

    optimizer: str
    label: str
    lr: float
    weight_decay: float
    final_train_loss: float
    metric: float
    state_bytes: int
    step_ms: float
    iteration_ms: float
    wall_s: float
    losses: list[float] = field(repr=False)


def _warmup_cosine(total: int) -> Callable[[int], float]:
    """Linear warm-up over 5% of the steps, then cosine decay to zero: the same for every optimizer."""
    warmup = max(1, total // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(task: Task, device: torch.device, steps: int = 10) -> None:
    """Untimed forward/backward passes on a throwaway model, so that the first optimizer measured does not
    pay for the process's one-off costs (kernel selection, allocator growth) that later ones skip."""
    model = task.model().to(device)
    for step in range(steps):
        task.loss(model, task.batch(step)).backward()


def train_one(
    task: Task, name: str, steps: int, seed: int, device: torch.device, progress: bool, smmf_fused: bool | None = None
) -> RunResult:
    """Train ``task``'s model from seed ``seed`` with optimizer ``name`` for ``steps`` steps."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = task.model().to(device)
    opt = registry.build(name, model.parameters(), decay_rate=task.decay_rate, fused=smmf_fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(steps))
    losses: list[float] = []
    step_times: list[float] = []
    iter_times: list[float] = []
    bar = tqdm(range(steps), desc=f"{task.name}/{name}", leave=False, disable=not progress, dynamic_ncols=True)
    for step in bar:
        batch = task.batch(step)
        _sync(device)
        t0 = time.perf_counter()
        loss = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _sync(device)
        t1 = time.perf_counter()
        opt.step()
        _sync(device)
        t2 = time.perf_counter()
        sched.step()
        losses.append(loss.item())
        if step >= min(TIMING_WARMUP, steps - 1):
            step_times.append(t2 - t1)
            iter_times.append(t2 - t0)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    tail = losses[-max(1, steps // 10) :]
    return RunResult(
        optimizer=name,
        label=registry.OPTIMIZERS[name].label,
        lr=opt.defaults["lr"],
        weight_decay=opt.defaults.get("weight_decay", 0.0),
        final_train_loss=sum(tail) / len(tail),
        metric=task.evaluate(model),
        state_bytes=optimizer_state_bytes(opt),
        step_ms=1e3 * statistics.median(step_times),
        iteration_ms=1e3 * statistics.median(iter_times),
        wall_s=time.perf_counter() - start,
        losses=losses,
    )


def run_task(
    task: Task,
    names: Sequence[str],
    steps: int,
    seed: int,
    device: torch.device,
    progress: bool,
    smmf_fused: bool | None = None,
) -> list[RunResult]:
    return [train_one(task, name, steps, seed, device, progress, smmf_fused) for name in names]


# ---------------------------------------------------------------------------------------- report


def _mib(n: int) -> str:
    return f"{n / 2**20:.3f} MiB" if n < 2**20 * 10 else f"{n / 2**20:.1f} MiB"


def table(task: Task, results: Sequence[RunResult]) -> str:
    """A Markdown table: loss, held-out metric, state memory vs Adam, step time vs Adam."""
    adam = next((r for r in results if r.optimizer == "adam"), None)

    def rel(value: float, base: float | None) -> str:
        return f"{value / base:.2f}" if base else "n/a"

    header = (
        "optimizer", "lr, wd", "final train loss", f"held-out {task.metric}", "state memory", "% of Adam",
        "opt.step() ms", "step × Adam", "iteration × Adam",
    )  # fmt: skip
    rows = [
        (
            r.label,
            f"{r.lr:g}, {r.weight_decay:g}",
            f"{r.final_train_loss:.4f}",
            f"{r.metric:.2f}",
            f"{_mib(r.state_bytes)} ({r.state_bytes:,} B)",
            f"{100 * r.state_bytes / adam.state_bytes:.1f}%" if adam else "n/a",
            f"{r.step_ms:.2f}",
            rel(r.step_ms, adam.step_ms if adam else None),
            rel(r.iteration_ms, adam.iteration_ms if adam else None),
        )
        for r in results
    ]
    return markdown_table(header, rows)


def _smooth(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    out, avg = [], values[0]
    for v in values:
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg)
    return out


def figure(tasks: Sequence[Task], results: dict[str, list[RunResult]], path: Path) -> None:
    """Per task: smoothed train-loss curves, and a bar chart of state memory as % of Adam."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        runs = results[task.name]
        for r in runs:
            row[0].plot(_smooth(r.losses), label=f"{r.label}: {task.metric.split(' ')[0]} {r.metric:.2f}", lw=1.3)
        row[0].set(title=f"{task.title}: train loss (EMA 0.1)", xlabel="step", ylabel="loss", yscale="log")
        row[0].legend(fontsize=8)
        adam = next((r for r in runs if r.optimizer == "adam"), None)
        base = adam.state_bytes if adam else max(r.state_bytes for r in runs)
        pct = [100 * r.state_bytes / base for r in runs]
        bars = row[1].bar([r.label for r in runs], pct, color="tab:blue")
        for b, r, p in zip(bars, runs, pct, strict=True):
            row[1].annotate(
                f"{p:.1f}%\n{_mib(r.state_bytes)}",
                (b.get_x() + b.get_width() / 2, p),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        row[1].set(
            title="optimizer state memory", ylabel="% of Adam" if adam else "% of largest", ylim=(0, max(pct) * 1.25)
        )
        row[1].tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(
    task_names: Sequence[str],
    names: Sequence[str],
    steps: int | None,
    seed: int,
    device: torch.device,
    out: Path,
    progress: bool = True,
    smmf_fused: bool | None = None,
) -> dict[str, Any]:
    """Run every optimizer on every task; write results.json, compare.md and compare.png into ``out``."""
    start = time.perf_counter()
    tasks: list[Task] = []
    results: dict[str, list[RunResult]] = {}
    for task_name in task_names:
        cls = TASKS[task_name]
        n = steps or cls.default_steps
        task = cls(n, seed, device)
        tasks.append(task)
        warm_up(task, device)
        results[task_name] = run_task(task, names, n, seed, device, progress, smmf_fused)
        print(f"\n## {task.title} ({n} steps, seed {seed})\n\n{table(task, results[task_name])}", flush=True)
    wall = time.perf_counter() - start
    meta = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "wall_s": wall,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "seed": seed,
        "smmf_step": "eager" if smmf_fused is False else "compiled (torch.compile, first steps untimed)",
        "timing": f"median over steps {TIMING_WARMUP}.. of optimizer.step() (and of forward+backward+step)",
    }
    payload = {
        "meta": meta,
        "tasks": {
            t.name: {
                "title": t.title,
                "metric": t.metric,
                "higher_is_better": t.higher_is_better,
                "steps": len(results[t.name][0].losses),
                "results": [asdict(r) for r in results[t.name]],
            }
            for t in tasks
        },
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    md = [f"# smmf compare ({meta['date']}, {meta['device']}, torch {meta['torch']}, {meta['threads']} threads)\n"]
    for t in tasks:
        md.append(f"## {t.title} ({len(results[t.name][0].losses)} steps)\n\n{table(t, results[t.name])}\n")
    md.append(f"Wall time: {wall:.0f} s. Step time: {meta['timing']}.\n")
    (out / "compare.md").write_text("\n".join(md))
    figure(tasks, results, out / "compare.png")
    print(f"\nwall time {wall:.0f} s; wrote {out}/results.json, compare.md, compare.png")
    return payload


# ---------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare optimizers on offline tasks (digits CNN, stdlib GPT-2)",
        description=(
            "Train the same model, same seed and data order, with each optimizer; print per task the final "
            "train loss, held-out metric, optimizer state memory (bytes, % of Adam) and step time relative "
            "to Adam; write results.json, compare.md and compare.png into --out. Runs offline."
        ),
    )
    p.add_argument(
        "--optimizers",
        default=",".join(n for n in registry.MAIN_NAMES if n != "smmf8"),
        help="comma-separated, from: " + ", ".join(registry.MAIN_NAMES) + " (default: %(default)s)",
    )
    p.add_argument(
        "--tasks",
        default=",".join(TASKS),
        help="comma-separated, from: " + ", ".join(TASKS) + " (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="training steps per run (default: " + ", ".join(f"{k} {v.default_steps}" for k, v in TASKS.items()) + ")",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="model init and data order seed (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: ./smmf-compare-<date-time>)")
    p.add_argument(
        "--smmf-eager",
        action="store_true",
        help="run SMMF's eager step instead of compiling it (skips the one-off compile; slower steps)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = check_names(split_names(args.optimizers), registry.MAIN_NAMES, "optimizer")
    task_names = check_names(split_names(args.tasks), TASKS, "task")
    if args.steps is not None and args.steps <= TIMING_WARMUP:
        raise UsageError(
            f"--steps: expected at least {TIMING_WARMUP + 1} (the first {TIMING_WARMUP} steps warm up and are "
            f"left out of the step-time medians), got {args.steps}"
        )
    check_seed(args.seed)
    device = resolve_device(args.device)
    out = writable_dir(args.out or Path(f"smmf-compare-{datetime.now():%Y%m%d-%H%M%S}"), "--out")
    print(f"smmf compare: {', '.join(task_names)} x {', '.join(names)} on {device}; writing to {out}", flush=True)
    compare(
        task_names,
        names,
        args.steps,
        args.seed,
        device,
        out,
        progress=not args.no_progress,
        smmf_fused=False if args.smmf_eager else None,
    )
    return 0
