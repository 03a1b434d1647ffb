"""``smmf compare``'s learning-rate search, plans and data splits, without training (fast)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from smmf.commands import compare, compare_search
from smmf.commands.compare_search import PRESETS, Plan, RunResult, RunSpec, lr_at, search


class _FakeTask:
    name, title, metric, higher_is_better, decay_rate, default_steps = "fake", "fake", "loss", False, -0.5, 20

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.tested: list[float] = []

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        assert split == "test"
        self.tested.append(float(model.lr))  # type: ignore[arg-type]
        return {self.metric: float(model.lr) + self.seed}  # type: ignore[arg-type]


def _fake_training(best: float, diverge_above: float = math.inf) -> object:
    """A train_one whose validation loss is |log10(lr / best)| (+ seed / 100), diverging above a threshold."""

    def train_one(task: _FakeTask, name: str, lr: float, seed: int, steps: int, spec: RunSpec) -> tuple:
        diverged = lr > diverge_above
        val = math.nan if diverged else abs(math.log10(lr / best)) + seed / 100
        run = RunResult(name, name, lr, seed, 0.0, 1.0, {"loss": val}, {}, 8, 1.0, 2.0, 0.1, diverged, [1.0])
        model = torch.nn.Module()
        model.lr = lr  # type: ignore[assignment]
        return run, model

    return train_one


def _search(monkeypatch: pytest.MonkeyPatch, plan: Plan, best: float, **kw: float) -> compare_search.Search:
    monkeypatch.setattr(compare_search, "train_one", _fake_training(best, **kw))
    tasks = {s: _FakeTask(s) for s in range(10)}
    seeds = list(range(plan.seeds))
    return search(tasks.__getitem__, "adam", 1e-3, plan, seeds, 20, RunSpec(torch.device("cpu")))


def test_grid_is_half_decades_around_the_usual_lr() -> None:
    assert [lr_at(1e-3, k) for k in range(-2, 3)] == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    assert lr_at(0.1, 3) == 3.0


def test_search_grows_past_the_edge_to_the_best_point(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan(tasks=("fake",), optimizers=("adam",), grid=(-1, 0, 1), seeds=3)
    found = _search(monkeypatch, plan, best=1e-2)
    assert found.grid == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]  # grown twice upwards, 1e-2 inside
    assert found.best_lr == 1e-2 and not found.at_edge
    assert sorted(r.seed for r in found.best_runs()) == [0, 1, 2]
    assert all(len(found.at(lr)) == 1 for lr in found.grid if lr != found.best_lr)  # seed 0 only elsewhere
    assert found.test_stats() == pytest.approx((1e-2 + 1, 1.0))  # test = lr + seed over seeds 0, 1, 2
    assert all(not r.test for r in found.runs if r.lr != found.best_lr)  # the test split only at the chosen lr


def test_search_stops_growing_and_says_the_best_is_on_the_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan(tasks=("fake",), optimizers=("adam",), grid=(-1, 0, 1), seeds=1, extend=1)
    found = _search(monkeypatch, plan, best=1e-6)
    assert found.grid == [1e-4, 3e-4, 1e-3, 3e-3] and found.best_lr == 1e-4 and found.at_edge


def test_diverged_points_are_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan(tasks=("fake",), optimizers=("adam",), grid=(-1, 0, 1), seeds=2)
    found = _search(monkeypatch, plan, best=1.0, diverge_above=2e-3)
    assert found.best_lr == 1e-3 and found.at_edge is False
    assert [r.diverged for r in found.at(3e-3)] == [True]
    assert math.isinf(found.score(3e-3))


def test_seeds_everywhere_chooses_on_the_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan(tasks=("fake",), optimizers=("adam",), grid=(-1, 0, 1), seeds=2, seeds_everywhere=True)
    found = _search(monkeypatch, plan, best=1e-3)
    assert all(sorted(r.seed for r in found.at(lr)) == [0, 1] for lr in found.grid)
    assert found.score(1e-3) == pytest.approx(0.005)
    plan = Plan(tasks=("fake",), optimizers=("adam",), grid=(-1, 0, 1), seeds=3, grid_seeds={"fake": 2})
    found = _search(monkeypatch, plan, best=1e-3)
    assert [len(found.at(lr)) for lr in found.grid] == [2, 3, 2]


def _args(**kw: object) -> argparse.Namespace:
    base = {"preset": None, "full": False, "optimizers": None, "tasks": None, "steps": None, "seeds": None, "lr": None}
    return argparse.Namespace(**{**base, **kw})


def test_presets_cpu_default_gpu_on_cuda_and_full_widens() -> None:
    name, plan = compare._plan(_args(), torch.device("cpu"))
    assert name == "quick" and plan.optimizers == ("adam", "smmf", "sgd") and plan.grid == (-1, 0, 1)
    name, plan = compare._plan(_args(), torch.device("cuda"))
    assert name == "gpu" and "text-gpu" in plan.tasks
    name, plan = compare._plan(_args(full=True), torch.device("cpu"))
    assert name == "full quick" and plan.grid == (-2, -1, 0, 1, 2) and plan.seeds == 5 and plan.seeds_everywhere
    assert plan.optimizers == ("adam", "adamw", "adafactor", "sm3", "came", "smmf", "sgd") == PRESETS["full"].optimizers
    assert plan.steps("text") == 2 * PRESETS["quick"].steps("text")
    _, plan = compare._plan(_args(lr=0.01, steps=50, seeds=2), torch.device("cpu"))
    assert plan.grid == (0,) and plan.extend == 0 and plan.steps("digits") == 50 and plan.seeds == 2


def test_gpu_text_model_has_10_to_30_million_parameters() -> None:
    from smmf.commands.compare_tasks import TextGPUTask

    task = object.__new__(TextGPUTask)
    with torch.device("meta"):
        model = task.model()
    assert 10e6 <= sum(p.numel() for p in model.parameters()) <= 30e6


def test_splits_are_disjoint() -> None:
    from smmf.commands.data import load_digits, stdlib_corpus

    digits = load_digits(seed=0)
    assert (len(digits.y_train), len(digits.y_val), len(digits.y_test)) == (1077, 360, 360)
    assert torch.bincount(digits.y_val).min() >= 34  # stratified: each class about a tenth
    train, val, test = stdlib_corpus(200_000, 20_000, 20_000)
    assert (train.numel(), val.numel(), test.numel()) == (200_000, 20_000, 20_000)
    text = {name: bytes(t.numpy()).decode("utf-8", "replace") for name, t in (("val", val), ("test", test))}
    assert text["val"][:2000] not in text["test"] and text["test"][:2000] not in bytes(train.numpy()).decode(
        "utf-8", "replace"
    )
