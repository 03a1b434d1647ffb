"""Stochastic rounding to bf16: unbiased, reproducible, resumable, and what makes small-lr bf16 training
learn (eager and inductor here; Triton in tests/interpreter)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smmf import SMMF, rounding

ULP = 2.0**-7  # bf16 spacing in [1, 2)


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.77])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stochastic_rounding_is_unbiased(fraction: float, sign: float) -> None:
    n = 1 << 18
    x = torch.full((n,), sign * (1.0 + fraction * ULP), dtype=torch.float32)
    bits = rounding.random_bits(torch.tensor(12345), torch.tensor(7), torch.arange(n))
    rounded = rounding.stochastic_round_bf16(x, bits).double()
    assert set(rounded.abs().unique().tolist()) == {1.0, 1.0 + ULP}
    sigma = ULP * math.sqrt(fraction * (1 - fraction) / n)
    assert abs(rounded.mean().item() - x[0].item()) < 5 * sigma
    assert abs(x.bfloat16().double().mean().item() - x[0].item()) > 50 * sigma  # round-to-nearest is biased


def test_random_bits_are_uniform_and_differ_by_seed_step_and_index() -> None:
    index = torch.arange(1 << 16)
    low = rounding.random_bits(torch.tensor(1), torch.tensor(1), index) & 0xFFFF
    assert abs(low.double().mean().item() - 32767.5) < 200
    assert len(low.unique()) > 0.6 * len(index)
    for seed, step in [(2, 1), (1, 2)]:
        other = rounding.random_bits(torch.tensor(seed), torch.tensor(step), index) & 0xFFFF
        assert (other != low).float().mean().item() > 0.99


def test_exact_values_inf_and_nan_survive() -> None:
    x = torch.tensor([1.0, -2.5, float("inf"), float("-inf"), float("nan"), 0.0])
    out = rounding.stochastic_round_bf16(x, torch.full((6,), 0xFFFF))
    assert out[:4].tolist() == [1.0, -2.5, float("inf"), float("-inf")] and math.isnan(out[4]) and out[5] == 0


def _bf16_run(backend: str, stochastic: bool, steps: int = 60) -> nn.Parameter:
    """Minimise |p|^2 from p = 1 with lr 1e-4: every update is below half a bf16 ulp of 1."""
    p = nn.Parameter(torch.ones(32, 24, dtype=torch.bfloat16))
    opt = SMMF([p], lr=1e-4, backend=backend, stochastic_rounding=stochastic)
    for _ in range(steps):
        p.grad = 2 * p.detach()
        opt.step()
    return p


@pytest.mark.parametrize("backend", ["eager", "inductor", "cpp"])
def test_small_lr_bf16_stalls_with_round_to_nearest_and_learns_with_stochastic_rounding(backend: str) -> None:
    assert torch.equal(_bf16_run(backend, stochastic=False), torch.ones(32, 24, dtype=torch.bfloat16))
    learned = _bf16_run(backend, stochastic=True).float().mean().item()
    assert learned < 1 - 40 * 1e-4 * 0.5  # about 0.9e-4 per step on average, in expectation
    assert learned > 1 - 60 * 1e-4 * 1.5


@pytest.mark.parametrize("backend", ["eager", "cpp"])
def test_stochastic_rounding_is_reproducible_and_resumes_bitwise(backend: str) -> None:
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(40, 30, generator=gen).bfloat16() for _ in range(6)]
    start = torch.randn(40, 30, generator=gen).bfloat16()

    def run(first: int, last: int, p: nn.Parameter, saved: dict | None = None) -> SMMF:
        opt = SMMF([p], lr=1e-3, backend=backend, stochastic_rounding=True)
        if saved is not None:
            opt.load_state_dict(saved)
        for grad in grads[first:last]:
            p.grad = grad.clone()
            opt.step()
        return opt

    whole, again = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    run(0, 6, whole), run(0, 6, again)
    assert torch.equal(whole, again)
    half = nn.Parameter(start.clone())
    saved = run(0, 3, half).state_dict()
    assert saved["state"][0]["seed"].dtype == torch.int64
    resumed = nn.Parameter(half.detach().clone())
    run(3, 6, resumed, saved)
    assert torch.equal(resumed, whole)


def test_stochastic_rounding_is_a_no_op_for_float32_and_checked() -> None:
    results = []
    for stochastic in (False, True):
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(12, 8))
        opt = SMMF([p], backend="eager", stochastic_rounding=stochastic)
        p.grad = torch.ones(12, 8)
        opt.step()
        assert "seed" not in opt.state[p]
        results.append(p.detach())
    assert torch.equal(*results)
    with pytest.raises(ValueError, match="stochastic_rounding"):
        SMMF([nn.Parameter(torch.zeros(2))], stochastic_rounding="yes")
