"""benchmarks/pass1_sweep.py's settings, as the GPU check times them, step as the default launch does.

The GPU machine is lent for minutes at a time; a setting that fails there (as a launch with the wrong
grid once did) costs its whole stage. So every setting ``gpu_check.sh sweep`` names runs here, under
the interpreter, from the same state as the default launch, and must give the same step.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import benchmark_modules
from smmf import triton_backend, triton_launch


def test_each_swept_setting_steps_as_the_default_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = benchmark_modules.load("pass1_sweep")
    monkeypatch.setattr(triton_launch, "INTERPRETER_BLOCK_R", triton_launch.BLOCK_R)
    monkeypatch.setattr(triton_backend, "_MIN_SCRATCH_BYTES", 0)
    monkeypatch.setattr(triton_backend, "SCRATCH_FRACTION", 0.01)  # tiles of several blocks each way
    params = sweep.parameters([(160, 160), (64, 96), (33, 12), (7,)], torch.float32, "cpu")
    opt, step_args = sweep._captured_step(params)
    checker = sweep.Checker(opt, params, step_args)
    for config in benchmark_modules.swept_pass1_launches():
        cells, variant = sweep.setting(step_args[0], config)
        assert variant is not None, f"{config}: {cells}"
        assert variant.pass1.text().startswith(config), config  # every field of the config reaches the plan
        assert checker.mismatch(variant) is None, config


def test_the_sweep_tells_a_setting_that_steps_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check that keeps a wrong setting from being chosen finds one: a plan whose tiles are half a
    block wide, so that its programs step half of each tensor's columns."""
    sweep = benchmark_modules.load("pass1_sweep")
    monkeypatch.setattr(triton_launch, "INTERPRETER_BLOCK_R", triton_launch.BLOCK_R)
    params = sweep.parameters([(128, 96)], torch.float32, "cpu")
    opt, step_args = sweep._captured_step(params)
    checker = sweep.Checker(opt, params, step_args)
    plan = step_args[0]
    broken = dataclasses.replace(plan, tile_bytes=plan.pass1.block_bytes // 2, launches={})
    assert checker.mismatch(broken) is not None
