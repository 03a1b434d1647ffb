"""benchmarks/pass1_sweep.py's settings, as the GPU check times them, step as the default launch does.

The GPU machine is lent for minutes at a time; a setting that fails there (as a launch with the wrong
grid once did) costs its whole stage. So every setting ``gpu_check.sh sweep`` names runs here, under
the interpreter, from the same state as the default launch, and must give the same step.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import benchmark_modules
from smmf import triton_backend, triton_launch


def _checker(
    monkeypatch: pytest.MonkeyPatch, sweep: Any, shapes: list[tuple[int, ...]]
) -> tuple[Any, triton_backend.Plan]:
    """pass1_sweep.py's (``sweep``'s) checker of fp32 ``shapes`` in the GPU's blocks of rows, and the
    default plan."""
    monkeypatch.setattr(triton_launch, "INTERPRETER_BLOCK_R", triton_launch.BLOCK_R)
    params = sweep.parameters(shapes, torch.float32, "cpu")
    opt, step_args = sweep._captured_step(params)
    return sweep.Checker(opt, params, step_args), step_args[0]


def _sweep_main(monkeypatch: pytest.MonkeyPatch, sweep: Any, timer: Any, *argv: str) -> None:
    """pass1_sweep.py's (``sweep``'s) main on the tiny workload, on CPU tensors, timed by ``timer`` (CUDA
    events do not run here)."""
    import triton.testing

    monkeypatch.setattr(triton.testing, "do_bench", timer)
    sweep.main(["--workload", "tiny", "--device", "cpu", *argv])


def test_each_swept_setting_steps_as_the_default_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_backend, "_MIN_SCRATCH_BYTES", 0)
    monkeypatch.setattr(triton_backend, "SCRATCH_FRACTION", 0.01)  # tiles of several blocks each way
    sweep = benchmark_modules.load("pass1_sweep")
    checker, plan = _checker(monkeypatch, sweep, sweep.TINY)
    for config in benchmark_modules.swept_pass1_launches():
        cells, variant = sweep.setting(plan, config)
        assert variant is not None, f"{config}: {cells}"
        assert variant.pass1.text().startswith(config), config  # every field of the config reaches the plan
        assert checker.mismatch(variant) is None, config


def test_the_sweep_tells_a_setting_that_steps_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check that keeps a wrong setting from being chosen finds one: a plan whose tiles are half a
    block wide, so that its programs step half of each tensor's columns."""
    checker, plan = _checker(monkeypatch, benchmark_modules.load("pass1_sweep"), [(128, 96)])
    broken = dataclasses.replace(plan, tile_bytes=plan.pass1.block_bytes // 2, launches={})
    assert checker.mismatch(broken) is not None


def test_the_sweep_writes_the_fastest_setting_that_steps_right(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sweep as gpu_check.sh runs it, on a few small tensors with the timer stubbed (CUDA events
    do not run here): every setting is checked, a wrong one is reported and never chosen, and --best
    names the fastest of the rest."""
    sweep = benchmark_modules.load("pass1_sweep")
    times = {"4:96:4:0:16:0:1": 2.0, "4:128:4:0:16:0:3": 1.0, "4:96:4:0:16:16:1": 0.5}
    stepped: list[str] = []

    def timed(fn: Any, **kwargs: Any) -> float:
        fn()
        return times[stepped[-1]]

    def broken(plan: triton_backend.Plan) -> str | None:
        stepped.append(plan.pass1.text())
        return "stepped wrong" if plan.pass1.row_chunk else None  # the fastest, but wrong

    monkeypatch.setattr(sweep.Checker, "mismatch", lambda self, plan: broken(plan))
    best = tmp_path / "best.txt"
    _sweep_main(monkeypatch, sweep, timed, "--best", str(best), "--configs", ",".join(times))
    table = capsys.readouterr().out
    assert "steps unlike the default launch: stepped wrong" in table
    assert stepped == list(times) and best.read_text() == "4:128:4:0:16:0:3\n"


def test_each_check_starts_from_the_state_before_the_timings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Timing a setting steps the tensors on, many times on a GPU; the next setting's check must still
    step from the state the expected step was taken from, or every setting after the first would be
    reported as stepping wrongly."""

    def steps_three_times(fn: Any, **kwargs: Any) -> float:
        for _ in range(3):
            fn()
        return 1.0

    sweep = benchmark_modules.load("pass1_sweep")
    _sweep_main(monkeypatch, sweep, steps_three_times, "--configs", "4:96:4:0:16,4:128:4:0:16:0:3,4:64:4:0:16")
    table = capsys.readouterr().out
    assert "steps unlike" not in table and table.count("| 1.000 |") == 3


def test_the_launch_nsight_compute_profiles_is_the_settings_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu_check.sh's ncu stage skips a number of step_tiles launches of pass1_sweep.py and profiles the
    next: that one must be the swept setting's, and the ones skipped the default launch's."""
    skip = re.search(r"--launch-skip (\d+)", (benchmark_modules.BENCHMARKS / "gpu_check.sh").read_text())
    assert skip, "gpu_check.sh's ncu stage names no --launch-skip"
    launches: list[str] = []
    step = triton_backend.step

    def record(plan: triton_backend.Plan, *args: Any) -> None:
        launches.append(plan.pass1.text())
        step(plan, *args)

    monkeypatch.setattr(triton_backend, "step", record)
    config = "4:128:4:0:16:0:3"
    sweep = benchmark_modules.load("pass1_sweep")
    _sweep_main(monkeypatch, sweep, lambda fn, **kwargs: fn() or 1.0, "--configs", config)
    default = triton_launch.pass1_launch(4, on_gpu=False).text()  # the interpreter's blocks of rows
    assert launches[: int(skip.group(1)) + 1] == [default] * int(skip.group(1)) + [config]
