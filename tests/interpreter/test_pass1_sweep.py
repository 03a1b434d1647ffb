"""benchmarks/pass1_sweep.py's settings, as the GPU check times them, step as the default launch does
(and those of pass 0 skip a tensor whose gradient holds an inf).

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
import triton
import triton.language as tl

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
        cells, variant = sweep.pass1_setting(plan, config)
        assert variant is not None, f"{config}: {cells}"
        assert variant.pass1.text().startswith(config), config  # every field of the config reaches the plan
        assert checker.mismatch(variant) is None, config


def test_each_swept_pass0_setting_steps_and_skips_as_the_default_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_backend, "_MIN_SCRATCH_BYTES", 0)
    monkeypatch.setattr(triton_backend, "SCRATCH_FRACTION", 0.01)
    sweep = benchmark_modules.load("pass1_sweep")
    checker, plan = _checker(monkeypatch, sweep, sweep.TINY)
    for config in benchmark_modules.swept_pass0_launches():
        _, variant = sweep.pass0_setting(plan, config)
        assert variant.pass0 == triton_launch.Pass0Launch.parse(config) and variant.pass1 == plan.pass1
        assert checker.mismatch(variant) is None, config
        assert checker.misses_nonfinite(variant) is None, config


@triton.jit
def _never_flags(
    table,
    tile_map,
    flags,
    G_DT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    STAGES: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """A pass 0 that finds nothing, for the sweep's check to catch."""


def test_the_sweep_tells_a_pass0_that_misses_an_inf(monkeypatch: pytest.MonkeyPatch) -> None:
    from smmf import triton_kernels

    checker, plan = _checker(monkeypatch, benchmark_modules.load("pass1_sweep"), [(128, 96), (40,)])
    monkeypatch.setattr(triton_kernels, "check_gradients", _never_flags)
    variant = dataclasses.replace(plan, launches={})
    assert checker.mismatch(variant) is None  # finite gradients: nothing to find
    assert checker.misses_nonfinite(variant) == "stepped a tensor whose gradient holds an inf"


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
    do not run here): every setting is checked, a wrong one, or one that cannot run (out of shared
    memory, say), is reported and never chosen, the sweep going on, and --best names the fastest of
    the rest."""
    sweep = benchmark_modules.load("pass1_sweep")
    times = {"4:96:4:0:16:0:1": 2.0, "4:64:4:0:16:0:4": 0.1, "4:128:4:0:16:0:3": 1.0, "4:96:4:0:16:16:1": 0.5}
    stepped: list[str] = []

    def timed(fn: Any, **kwargs: Any) -> float:
        fn()
        return times[stepped[-1]]

    def broken(plan: triton_backend.Plan) -> str | None:
        stepped.append(plan.pass1.text())
        if plan.pass1.stages == 4:
            raise RuntimeError("out of resource: shared memory, Required: 300000, Hardware limit: 232448")
        return "stepped wrong" if plan.pass1.row_chunk else None  # the fastest, but wrong

    monkeypatch.setattr(sweep.Checker, "mismatch", lambda self, plan: broken(plan))
    best = tmp_path / "best.txt"
    _sweep_main(monkeypatch, sweep, timed, "--best", str(best), "--configs", ",".join(times))
    table = capsys.readouterr().out
    assert "steps unlike the default launch: stepped wrong" in table
    assert "raised RuntimeError: out of resource: shared memory" in table
    assert stepped == list(times) and best.read_text() == "4:128:4:0:16:0:3\n"


def test_the_sweep_writes_the_fastest_pass0_setting_that_skips_an_inf(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pass 0's settings before pass 1's, each beside pass 1's default launch: one that misses an inf
    is reported and never chosen, and --best-pass0 names the fastest of the rest."""
    sweep = benchmark_modules.load("pass1_sweep")
    times = {"4:0:2048:1:1:0": 2.0, "4:40:2048:3:4:0": 1.0, "8:32:2048:3:1:0": 0.5, "4:0:2048:1:1:1": 1.5}
    stepped: list[str] = []

    def timed(fn: Any, **kwargs: Any) -> float:
        fn()
        return times.get(stepped[-1], 3.0)

    def misses(self: Any, plan: triton_backend.Plan) -> str | None:
        return "missed it" if plan.pass0.num_warps == 8 else None  # the fastest, but wrong

    monkeypatch.setattr(sweep.Checker, "misses_nonfinite", misses)
    monkeypatch.setattr(triton_backend, "step", _recording(stepped, lambda plan: plan.pass0.text()))
    best, best_pass0 = tmp_path / "best.txt", tmp_path / "best-pass0.txt"
    argv = ["--best", str(best), "--pass0-configs", ",".join(times), "--best-pass0", str(best_pass0)]
    _sweep_main(monkeypatch, sweep, timed, *argv)
    assert "steps unlike the default launch: missed it" in capsys.readouterr().out
    assert best.read_text() == "4:96:4:0:16:0:1\n" and best_pass0.read_text() == "4:40:2048:3:4:0\n"


def test_each_check_starts_from_the_state_before_the_timings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Timing a setting steps the tensors on, many times on a GPU; the next setting's check must still
    step from the state the expected step was taken from, or every setting after the first would be
    reported as stepping wrongly."""

    def steps_twice(fn: Any, **kwargs: Any) -> float:
        fn()
        fn()
        return 1.0

    sweep = benchmark_modules.load("pass1_sweep")
    argv = ["--configs", "4:96:4:0:16,4:128:4:0:16:0:3", "--pass0-configs", "4:40:2048:3"]
    _sweep_main(monkeypatch, sweep, steps_twice, *argv)
    table = capsys.readouterr().out
    assert "steps unlike" not in table and table.count("| 1.000 |") == 3


def _recording(seen: list[Any], what: Any) -> Any:
    """``triton_backend.step`` that first notes ``what(plan)`` of each plan it steps in ``seen``."""
    step = triton_backend.step

    def record(plan: triton_backend.Plan, *args: Any) -> None:
        seen.append(what(plan))
        step(plan, *args)

    return record


def test_the_launch_nsight_compute_profiles_is_the_settings_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu_check.sh's ncu stage skips a number of step_tiles launches of pass1_sweep.py and profiles the
    next: that one must be the swept setting's, and the ones skipped the default launch's."""
    skip = re.search(r"--launch-skip (\d+)", (benchmark_modules.BENCHMARKS / "gpu_check.sh").read_text())
    assert skip, "gpu_check.sh's ncu stage names no --launch-skip"
    launches: list[tuple[str, str]] = []
    monkeypatch.setattr(
        triton_backend, "step", _recording(launches, lambda plan: (plan.pass1.text(), plan.pass0.text()))
    )
    config = "4:128:4:0:16:0:3"
    sweep = benchmark_modules.load("pass1_sweep")
    _sweep_main(monkeypatch, sweep, lambda fn, **kwargs: fn() or 1.0, "--configs", config)
    default = triton_launch.pass1_launch(4, on_gpu=False).text()  # the interpreter's blocks of rows
    pass0 = triton_launch.PASS0[4].text()  # and the check_gradients launch it profiles: the default's
    assert launches[: int(skip.group(1)) + 1] == [(default, pass0)] * int(skip.group(1)) + [(config, pass0)]


@pytest.mark.parametrize(
    ("together_ms", "kept"), [(0.5, "4:0:2048:1:1:1"), (0.9, "4:0:2048:1:1:0"), (None, "4:0:2048:1:1:0")]
)
def test_the_fastest_pass0_is_kept_only_if_it_helps_the_fastest_pass1(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    together_ms: float | None,
    kept: str,
) -> None:
    """Each sweep times its settings beside the other pass's default launch; the tuned stage runs the
    two fastest together. The pair is checked and timed: a fastest pass 0 (here the queue, which
    compiles into pass 1's kernel) that makes the fastest pass 1 slower (0.9 ms against 0.8), or that
    steps wrong beside it (None), falls back to today's pass 0."""
    sweep = benchmark_modules.load("pass1_sweep")
    pass1, pass0 = "4:128:4:0:16:0:3", "4:0:2048:1:1:1"
    if together_ms is None:  # the pair misses an inf that each setting alone finds

        def misses(self: Any, plan: triton_backend.Plan) -> str | None:
            return "missed it" if (plan.pass1.text(), plan.pass0.text()) == (pass1, pass0) else None

        monkeypatch.setattr(sweep.Checker, "misses_nonfinite", misses)

    def milliseconds(setting: tuple[str, str]) -> float:  # the default pass 1, or 4:96:4, takes 2.0 ms
        if setting[1] == pass0:
            return together_ms if setting[0] == pass1 else 1.5
        return 0.8 if setting[0] == pass1 else 2.0

    stepped: list[tuple[str, str]] = []
    monkeypatch.setattr(triton_backend, "step", _recording(stepped, lambda p: (p.pass1.text(), p.pass0.text())))
    best, best_pass0 = tmp_path / "best.txt", tmp_path / "best-pass0.txt"
    argv = ["--configs", f"4:96:4,{pass1}", "--pass0-configs", f"4:0:2048:1,{pass0}"]
    _sweep_main(
        monkeypatch,
        sweep,
        lambda fn, **kwargs: fn() or milliseconds(stepped[-1]),
        *argv,
        *("--best", str(best), "--best-pass0", str(best_pass0)),
    )
    out = capsys.readouterr().out
    result = "missed it" if together_ms is None else f"{together_ms:.3f} ms"
    assert f"Together, pass 1 {pass1} and pass 0 {pass0}: {result}" in out
    assert (pass1, pass0) in stepped  # checked (and timed) together
    assert best.read_text() == f"{pass1}\n" and best_pass0.read_text() == f"{kept}\n"
