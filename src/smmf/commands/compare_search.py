"""The learning-rate search of ``smmf compare``: a grid per optimizer, chosen on validation, seeds at the best.

Each optimizer gets a grid of learning rates in half-decade steps around its usual value (Adam 1e-3 ->
3e-4, 1e-3, 3e-3). Each point trains with seed 0 and is scored on the task's validation split; while
the best point lies on an edge of the grid, the grid grows one point past it (up to ``Plan.extend``
times). The best point then trains with further seeds, and the report gives the test metric as mean
and standard deviation over them. Validation chooses, test reports: the two never mix.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..memory import optimizer_state_bytes
from . import registry
from .compare_tasks import TASKS, Task
from .interrupts import raise_if_interrupted

__all__ = [
    "TIMING_WARMUP",
    "Plan",
    "PRESETS",
    "preset_plan",
    "RunSpec",
    "RunResult",
    "Search",
    "lr_at",
    "train_one",
    "search",
]

TIMING_WARMUP = 10  # steps excluded from step-time medians (compilation, allocator warm-up)


@dataclass(frozen=True)
class Plan:
    """What a comparison searches: tasks, optimizers, grid, seeds and steps."""

    tasks: tuple[str, ...]
    optimizers: tuple[str, ...]
    grid: tuple[int, ...]  # half-decade offsets from each optimizer's usual lr: -1, 0, 1 -> x0.3, x1, x3
    seeds: int  # seeds at the chosen point (and at every point if seeds_everywhere)
    seeds_everywhere: bool = False
    grid_seeds: dict[str, int] = field(default_factory=dict)  # per task, seeds at every point (default 1)
    extend: int = 3  # how many points the grid may grow past an edge that holds the best point
    step_scale: float = 1.0  # x each task's default steps
    fixed_steps: int | None = None  # every task this many steps instead (``--steps``)
    lr: float | None = None  # the grid's centre for every optimizer instead of its usual lr (``--lr``)

    def widened(self) -> Plan:
        """``--full``: every optimizer of the paper's comparison, a 5-point grid, 5 seeds at every point,
        twice the steps."""
        return replace(
            self,
            optimizers=ALL_OPTIMIZERS,
            grid=(-2, -1, 0, 1, 2),
            seeds=5,
            seeds_everywhere=True,
            step_scale=2 * self.step_scale,
        )

    def steps(self, task: str) -> int:
        if self.fixed_steps is not None:
            return self.fixed_steps
        return max(TIMING_WARMUP + 1, round(TASKS[task].default_steps * self.step_scale))

    def center(self, optimizer: str) -> float:
        return self.lr if self.lr is not None else registry.OPTIMIZERS[optimizer].lr

    def seeds_per_point(self, task: str) -> int:
        return self.seeds if self.seeds_everywhere else min(self.seeds, self.grid_seeds.get(task, 1))

    def describe(self) -> str:
        """One line for the output: what was searched."""
        offsets = ", ".join(f"x{_multiplier(k):g}" for k in self.grid)
        per_point = ", ".join(f"{t} {self.seeds_per_point(t)}" for t in self.tasks)
        return (
            f"grid {offsets} of each optimizer's usual lr (grown past an edge up to {self.extend} times); "
            f"seeds at each point: {per_point}, chosen on their mean validation metric; "
            f"{self.seeds} seeds at the chosen point, reported on test"
        )


ALL_OPTIMIZERS = ("adam", "adamw", "adafactor", "sm3", "came", "smmf", "sgd")

# The CPU default fits about 5 minutes on 2 cores: Adam (the reference point), SMMF, and SGD with
# momentum (to show that the tasks separate optimizers). Digits runs take a fraction of a second and one
# seed's validation score is noisy on 360 images, so every digits point trains 3 seeds; a text point, 1.
# ``--full`` widens it; ``gpu`` runs on CUDA.
PRESETS: dict[str, Plan] = {
    "quick": Plan(
        tasks=("digits", "text"), optimizers=("adam", "smmf", "sgd"), grid=(-1, 0, 1), seeds=3, grid_seeds={"digits": 3}
    ),
    "full": Plan(tasks=("digits", "text"), optimizers=ALL_OPTIMIZERS, grid=(-1, 0, 1), seeds=3).widened(),
    "gpu": Plan(
        tasks=("digits", "text-gpu"),
        optimizers=("adam", "adamw", "adafactor", "smmf", "sgd"),
        grid=(-1, 0, 1),
        seeds=3,
        grid_seeds={"digits": 3},
    ),
}


def preset_plan(preset: str | None, cuda: bool, full: bool) -> tuple[str, Plan]:
    """The named preset (default: gpu on a CUDA device, else quick), widened for ``--full``, and its name."""
    name = preset or ("gpu" if cuda else "quick")
    return ("full " if full else "") + name, PRESETS[name].widened() if full else PRESETS[name]


def _multiplier(offset: int) -> float:
    """10**(offset/2) to one significant digit: ... 0.1, 0.3, 1, 3, 10, 30 ..."""
    value = 10 ** (offset / 2)
    return float(f"{value:.0e}")


def lr_at(center: float, offset: int) -> float:
    """The learning rate ``offset`` half-decades from ``center`` (two significant digits)."""
    return float(f"{center * _multiplier(offset):.1e}")


@dataclass
class RunResult:
    """One optimizer, one learning rate, one seed, on one task."""

    optimizer: str
    label: str
    lr: float
    seed: int
    weight_decay: float
    final_train_loss: float
    val: dict[str, float]
    test: dict[str, float]
    state_bytes: int
    step_ms: float
    iteration_ms: float
    wall_s: float
    diverged: bool
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


@dataclass(frozen=True)
class RunSpec:
    """How every run of one comparison trains: device, weight dtype, SMMF's backend, progress bars."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    smmf_fused: bool | None = None
    progress: bool = True


def train_one(
    task: Task, name: str, lr: float, seed: int, steps: int, spec: RunSpec
) -> tuple[RunResult, torch.nn.Module]:
    """Train ``task``'s model from ``seed`` with optimizer ``name`` at ``lr`` and score it on validation
    (the test split waits until the point is chosen); stop early if the loss turns non-finite (a diverged
    run scores NaN and is never chosen)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = task.model().to(spec.device, spec.dtype)
    opt = registry.build(name, model.parameters(), lr=lr, decay_rate=task.decay_rate, fused=spec.smmf_fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(steps))
    losses: list[float] = []
    step_times: list[float] = []
    iter_times: list[float] = []
    desc = f"{task.name}/{name} lr {lr:g} seed {seed}"
    for step in tqdm(range(steps), desc=desc, leave=False, disable=not spec.progress, dynamic_ncols=True):
        raise_if_interrupted()
        batch = task.batch(step)
        _sync(spec.device)
        t0 = time.perf_counter()
        loss = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _sync(spec.device)
        t1 = time.perf_counter()
        opt.step()
        _sync(spec.device)
        t2 = time.perf_counter()
        sched.step()
        losses.append(loss.item())
        if step >= min(TIMING_WARMUP, steps - 1):
            step_times.append(t2 - t1)
            iter_times.append(t2 - t0)
        if not math.isfinite(losses[-1]):
            break
    diverged = not math.isfinite(losses[-1])
    val = {task.metric: math.nan} if diverged else task.evaluate(model, "val")
    tail = losses[-max(1, steps // 10) :]
    return RunResult(
        optimizer=name,
        label=registry.OPTIMIZERS[name].label,
        lr=lr,
        seed=seed,
        weight_decay=opt.defaults.get("weight_decay", 0.0),
        final_train_loss=sum(tail) / len(tail),
        val=val,
        test={},
        state_bytes=optimizer_state_bytes(opt),
        step_ms=1e3 * statistics.median(step_times) if step_times else math.nan,
        iteration_ms=1e3 * statistics.median(iter_times) if iter_times else math.nan,
        wall_s=time.perf_counter() - start,
        diverged=diverged,
        losses=losses,
    ), model


@dataclass
class Search:
    """One optimizer's learning-rate search on one task: every run, and the point validation chose."""

    optimizer: str
    label: str
    metric: str
    higher_is_better: bool
    runs: list[RunResult]
    best_lr: float = math.nan
    at_edge: bool = False  # the best point is on the grid's edge even after growing: a better one may lie beyond

    @property
    def grid(self) -> list[float]:
        return sorted({r.lr for r in self.runs})

    def at(self, lr: float) -> list[RunResult]:
        return [r for r in self.runs if r.lr == lr]

    def score(self, lr: float) -> float:
        """Mean validation metric at ``lr``, signed so that lower is better; a point where any seed
        diverged scores +inf."""
        values = [r.val[self.metric] for r in self.at(lr)]
        if not values or not all(math.isfinite(v) for v in values):
            return math.inf
        mean = statistics.fmean(values)
        return -mean if self.higher_is_better else mean

    def best_runs(self) -> list[RunResult]:
        return self.at(self.best_lr)

    def test_stats(self, key: str | None = None) -> tuple[float, float]:
        """Mean and standard deviation (0 for one seed) of a test metric over the chosen point's seeds."""
        values = [r.test.get(key or self.metric, math.nan) for r in self.best_runs()]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def search(
    task_for: Callable[[int], Task],
    name: str,
    center: float,
    plan: Plan,
    seeds: Sequence[int],
    steps: int,
    spec: RunSpec,
    log: Callable[[RunResult], None] = lambda run: None,
) -> Search:
    """Search optimizer ``name``'s learning rate around ``center`` on the task ``task_for(seed)`` builds;
    each grid point trains the first ``plan.seeds_per_point(task)`` of ``seeds``, the best point all."""
    probe = task_for(seeds[0])
    found = Search(name, registry.OPTIMIZERS[name].label, probe.metric, probe.higher_is_better, [])
    offsets: list[int] = []
    models: list[torch.nn.Module] = []  # beside found.runs, until the chosen ones are tested

    def train(offset: int, seeds: Sequence[int]) -> None:
        lr = lr_at(center, offset)
        for seed in seeds:
            if not any(r.seed == seed for r in found.at(lr)):
                run, model = train_one(task_for(seed), name, lr, seed, steps, spec)
                found.runs.append(run)
                models.append(model)
                log(run)

    def best_offset() -> int:
        return min(sorted(offsets), key=lambda k: found.score(lr_at(center, k)))

    grid_seeds = seeds[: plan.seeds_per_point(probe.name)]
    for offset in plan.grid:
        offsets.append(offset)
        train(offset, grid_seeds)
    for _ in range(plan.extend):
        best = best_offset()
        if best not in (min(offsets), max(offsets)) or len(offsets) == 1:
            break
        offsets.append(best - 1 if best == min(offsets) else best + 1)
        train(offsets[-1], grid_seeds)
    best = best_offset()
    train(best, seeds)
    found.best_lr = lr_at(center, best)
    for run, model in zip(found.runs, models, strict=True):
        if run.lr == found.best_lr:
            run.test = {found.metric: math.nan} if run.diverged else task_for(run.seed).evaluate(model, "test")
    found.at_edge = len(offsets) > 1 and best in (min(offsets), max(offsets))
    return found
