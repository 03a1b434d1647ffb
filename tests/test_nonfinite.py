"""Non-finite gradients never corrupt state: the tensor skips the step (parameter and state unchanged)
and counts it, in the eager, inductor and C++ backends (Triton: tests/interpreter)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from smmf import SMMF
from step_helpers import NON_FINITE_CASES, assert_bad_step_is_skipped

CASE_IDS = ["nan", "inf", "1e20-fp32", "1e20-bf16", "inf-fp16"]


@pytest.mark.parametrize("backend", ["eager", "inductor", "cpp"])
@pytest.mark.parametrize(("dtype", "bad"), NON_FINITE_CASES, ids=CASE_IDS)
def test_a_bad_gradient_skips_only_its_tensor(backend: str, dtype: torch.dtype, bad: float) -> None:
    assert_bad_step_is_skipped(backend, dtype, bad)


@pytest.mark.parametrize(
    "kwargs",
    [{"block_size": 512}, {"sign_bits": 8}, {"beta": None, "growth_rate": None}],
    ids=["row-blocks", "8-bit", "no-momentum"],
)
def test_the_skip_holds_on_every_path(kwargs: dict) -> None:
    assert_bad_step_is_skipped("eager", torch.float32, float("nan"), **kwargs)


def test_the_skip_holds_across_compiled_row_blocks() -> None:
    """The compiled blocks normalize the column factors in the last block's call, only where allowed."""
    assert_bad_step_is_skipped("inductor", torch.float32, float("inf"), block_size=512)


@pytest.mark.parametrize("backend", ["eager", "inductor", "cpp"])
def test_a_finite_fp16_gradient_with_a_norm_above_the_fp16_range_steps(backend: str) -> None:
    """The rule is about the factor dtype (fp32): 10,000 elements of 1000 have a 2-norm of 1e5, beyond
    fp16's 65504, yet every square and sum is finite in fp32, so the tensor steps."""
    p = nn.Parameter(torch.ones(100, 100, dtype=torch.float16))
    opt = SMMF([p], lr=0.1, backend=backend)
    p.grad = torch.full_like(p, 1000.0)
    opt.step()
    assert opt.skipped_steps() == {} and torch.all(p < 1)


@pytest.mark.parametrize("backend", ["eager", "inductor", "cpp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_gradient_whose_squares_sum_past_the_fp32_range_skips(backend: str, dtype: torch.dtype) -> None:
    """Each square of 1e19 is finite in fp32 (1e38) but four of them sum past its 3.4e38: the factor sums
    would overflow, so the tensor skips; three of them (3e38) step. bf16 gradients take their own norm."""
    for count, skipped in ((3, {}), (4, {0: 1})):
        p = nn.Parameter(torch.ones(64, 48, dtype=dtype))
        opt = SMMF([p], lr=0.1, backend=backend)
        p.grad = torch.zeros_like(p)
        p.grad[0, :count] = 1e19
        with pytest.warns(RuntimeWarning) if skipped else contextlib.nullcontext():
            opt.step()
            assert opt.skipped_steps() == skipped


def test_dense_vectors_skip_too() -> None:
    p = nn.Parameter(torch.ones(10))
    opt = SMMF([p], lr=0.1, vector_reshape=False, backend="eager")
    p.grad = torch.ones(10)
    opt.step()
    before = p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone()
    p.grad = torch.ones(10)
    p.grad[3] = float("inf")
    opt.step()
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["exp_avg"], before[1])
    assert torch.equal(opt.state[p]["exp_avg_sq"], before[2])
    assert opt.state[p]["skipped"].item() == 1 and opt.state[p]["step"].item() == 1


def test_skipped_steps_is_empty_and_silent_when_nothing_was_skipped(recwarn: pytest.WarningsRecorder) -> None:
    p = nn.Parameter(torch.ones(4, 4))
    opt = SMMF([p], backend="eager")
    p.grad = torch.ones(4, 4)
    opt.step()
    assert opt.skipped_steps() == {}
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_state_saved_before_the_counter_existed_gains_it() -> None:
    p = nn.Parameter(torch.ones(6, 4))
    opt = SMMF([p], backend="eager")
    p.grad = torch.ones(6, 4)
    opt.step()
    saved = opt.state_dict()
    del saved["state"][0]["skipped"]
    twin = SMMF([nn.Parameter(p.detach().clone())], backend="eager")
    twin.load_state_dict(saved)
    q = twin.param_groups[0]["params"][0]
    q.grad = torch.ones(6, 4)
    twin.step()
    assert twin.state[q]["skipped"].item() == 0 and twin.state[q]["step"].item() == 2


def test_a_non_finite_saved_state_is_refused_on_load() -> None:
    p = nn.Parameter(torch.ones(6, 4))
    opt = SMMF([p], backend="eager")
    p.grad = torch.ones(6, 4)
    opt.step()
    saved = opt.state_dict()
    saved["state"][0]["row_v"][2] = float("nan")
    with pytest.raises(ValueError, match=r"parameter 0.*row_v.*non-finite"):
        SMMF([nn.Parameter(torch.ones(6, 4))], backend="eager").load_state_dict(saved)
