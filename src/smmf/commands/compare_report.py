"""The report of ``smmf compare``: a table per task, the figure a practitioner chooses from, the JSON.

The table gives each optimizer's searched grid, the learning rate validation chose, and the test metric
at that rate as mean ± std over seeds, beside state memory and step time relative to Adam. The figure
shows, per task, the validation metric against the learning rate (the sensitivity: how wide the good
region is, how far each optimizer's best lies from its usual value), the loss curves at the chosen
rates, and the state memory.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import markdown_table
from .compare_search import Search
from .compare_tasks import Task

__all__ = ["table", "figure", "payload"]


def _mib(n: int) -> str:
    return f"{n / 2**20:.3f} MiB" if n < 2**20 * 10 else f"{n / 2**20:.1f} MiB"


def _lr(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _grid(s: Search) -> str:
    points = [f"**{_lr(lr)}**" if lr == s.best_lr else _lr(lr) for lr in s.grid]
    return " · ".join(points) + (" (edge)" if s.at_edge else "")


def _mean_std(mean: float, std: float, digits: int) -> str:
    return "diverged" if not math.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def table(task: Task, searches: Sequence[Search]) -> str:
    """A Markdown table: grid and chosen lr, test metric mean ± std over seeds and vs Adam, memory, speed."""
    adam = next((s for s in searches if s.optimizer == "adam"), None)
    extra = sorted({k for s in searches for r in s.best_runs() for k in r.test} - {task.metric})
    adam_mean = adam.test_stats()[0] if adam else math.nan
    adam_bytes = adam.best_runs()[0].state_bytes if adam else 0
    adam_step = _median([r.step_ms for r in adam.best_runs()]) if adam else math.nan
    digits = 2 if task.metric == "perplexity" else 4
    header = [
        "optimizer", "lr searched (**chosen** on validation)", f"test {task.metric}, mean ± std",
        *(f"test {k}" for k in extra), "vs Adam", "seeds", "state memory", "% of Adam", "opt.step() ms", "step × Adam",
    ]  # fmt: skip
    rows = []
    for s in searches:
        runs = s.best_runs()
        mean, std = s.test_stats()
        step_ms = _median([r.step_ms for r in runs])
        rows.append(
            (
                s.label,
                _grid(s),
                _mean_std(mean, std, digits),
                *(_mean_std(*s.test_stats(k), 2) for k in extra),
                f"{100 * (mean / adam_mean - 1):+.1f}%" if adam and math.isfinite(mean) else "n/a",
                str(len(runs)),
                f"{_mib(runs[0].state_bytes)}",
                f"{100 * runs[0].state_bytes / adam_bytes:.1f}%" if adam_bytes else "n/a",
                f"{step_ms:.2f}",
                f"{step_ms / adam_step:.2f}" if math.isfinite(adam_step) else "n/a",
            )
        )
    return markdown_table(header, rows)


def _smooth(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    out, avg = [], values[0]
    for v in values:
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg)
    return out


def _sensitivity(ax: Any, task: Task, searches: Sequence[Search]) -> None:
    """Validation metric against lr per optimizer: mean over the seeds run at each point, ± std."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    plotted: list[float] = []
    for s in searches:
        points = [(lr, [r.val[task.metric] for r in s.at(lr)]) for lr in s.grid]
        finite = [(lr, v) for lr, v in points if all(math.isfinite(x) for x in v)]
        if finite:
            means = [statistics.fmean(v) for _, v in finite]
            stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in finite]
            line = ax.errorbar([lr for lr, _ in finite], means, yerr=stds, marker="o", ms=4, capsize=3, label=s.label)
            best = statistics.fmean(r.val[task.metric] for r in s.best_runs())
            ax.plot([s.best_lr], [best], marker="*", ms=13, color=line[0].get_color(), zorder=5)
            plotted += means
        diverged = [lr for lr, v in points if not all(math.isfinite(x) for x in v)]
        if diverged:
            ax.plot(diverged, [1.0] * len(diverged), "x", ms=8, transform=ax.get_xaxis_transform(), color="tab:red")
    ax.set(xscale="log", xlabel="peak learning rate", ylabel=f"validation {task.metric}")
    if plotted and max(plotted) > 3 * min(plotted):  # a log scale only where values span a wide range
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_title(f"{task.title}\nsensitivity: ★ chosen, × diverged, bars ± std over seeds", fontsize=9)
    ax.legend(fontsize=8)


def _curves(ax: Any, task: Task, searches: Sequence[Search]) -> None:
    for s in searches:
        run = s.best_runs()[0]
        mean, std = s.test_stats()
        ax.plot(_smooth(run.losses), lw=1.2, label=f"{s.label} (lr {_lr(s.best_lr)}): test {mean:.3g} ± {std:.2g}")
    ax.set(title="train loss at the chosen lr, first seed (EMA 0.1)", xlabel="step", ylabel="loss", yscale="log")
    ax.legend(fontsize=7)


def _memory(ax: Any, searches: Sequence[Search]) -> None:
    sizes = [s.best_runs()[0].state_bytes for s in searches]
    adam = next((b for s, b in zip(searches, sizes, strict=True) if s.optimizer == "adam"), None)
    pct = [100 * b / (adam or max(sizes)) for b in sizes]
    bars = ax.bar([s.label for s in searches], pct, color="tab:blue")
    for bar, size, p in zip(bars, sizes, pct, strict=True):
        ax.annotate(
            f"{p:.1f}%\n{_mib(size)}", (bar.get_x() + bar.get_width() / 2, p), ha="center", va="bottom", fontsize=7
        )
    ax.set(title="optimizer state memory", ylabel="% of Adam" if adam else "% of largest", ylim=(0, max(pct) * 1.3))
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)


def figure(tasks: Sequence[Task], results: dict[str, list[Search]], path: Path) -> None:
    """Per task: learning-rate sensitivity, loss curves at the chosen rates, state memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tasks), 3, figsize=(17, 4.4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        _sensitivity(row[0], task, results[task.name])
        _curves(row[1], task, results[task.name])
        _memory(row[2], results[task.name])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def payload(meta: dict[str, Any], tasks: Sequence[Task], results: dict[str, list[Search]]) -> dict[str, Any]:
    """Everything measured, for results.json: per task and optimizer, the chosen lr and every run."""
    return {
        "meta": meta,
        "tasks": {
            t.name: {
                "title": t.title,
                "metric": t.metric,
                "higher_is_better": t.higher_is_better,
                "searches": [
                    {
                        "optimizer": s.optimizer,
                        "label": s.label,
                        "best_lr": s.best_lr,
                        "at_edge": s.at_edge,
                        "test_mean": s.test_stats()[0],
                        "test_std": s.test_stats()[1],
                        "runs": [asdict(r) for r in s.runs],
                    }
                    for s in results[t.name]
                ],
            }
            for t in tasks
        },
    }
