"""benchmarks/pass1_sweep.py's settings, as the GPU check times them, step as the default launch does.

The GPU machine is lent for minutes at a time; a setting that fails there (as a launch with the wrong
grid once did) costs its whole stage. So every setting ``gpu_check.sh sweep`` names runs here, under
the interpreter, from the same state as the default launch, and must give the same step.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import benchmark_modules
from smmf import triton_backend

GPU_CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _swept_configs() -> list[str]:
    match = re.search(r"pass1_sweep\.py --workload \"\$workload\" \\\s+--configs ([\d:,]+)", GPU_CHECK.read_text())
    assert match, "gpu_check.sh's sweep stage names no --configs"
    return match.group(1).split(",")


def _state_tensors(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    state = [value for p in params for value in opt.state[p].values() if isinstance(value, torch.Tensor)]
    return [p.detach() for p in params] + state


def test_each_swept_setting_steps_as_the_default_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = benchmark_modules.load("pass1_sweep")
    for name in ("PASS1_OPTIONS", "PASS1_PREFETCH", "PASS1_ROW_CHUNK"):
        monkeypatch.setattr(triton_backend, name, getattr(triton_backend, name))  # restored after the test
    monkeypatch.setattr(triton_backend, "INTERPRETER_BLOCK_R", triton_backend.BLOCK_R)
    monkeypatch.setattr(triton_backend, "_MIN_SCRATCH_BYTES", 0)
    monkeypatch.setattr(triton_backend, "SCRATCH_FRACTION", 0.01)  # tiles of several blocks each way
    params = sweep.parameters([(160, 160), (64, 96), (33, 12), (7,)], torch.float32, "cpu")
    opt, (plan, p_dtype, g_dtype, hp, lr) = sweep._captured_step(params)
    tensors = _state_tensors(opt, params)
    before = [t.clone() for t in tensors]
    triton_backend.step(plan, p_dtype, g_dtype, hp, lr)
    expected = [t.clone() for t in tensors]
    for config in _swept_configs():
        for t, old in zip(tensors, before, strict=True):
            t.copy_(old)
        cells, variant = sweep.setting(plan, config)
        assert variant is not None, f"{config}: {cells}"
        triton_backend.step(variant, p_dtype, g_dtype, hp, lr)
        for got, want in zip(tensors, expected, strict=True):
            if got.dtype == torch.uint8:  # signs: may differ only where M is within rounding of 0
                assert (got != want).float().mean() <= 0.01, config
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, c=config: f"{c}: {m}")
