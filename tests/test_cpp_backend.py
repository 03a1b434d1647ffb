"""The C++ backend (smmf.cpp_backend): equal to the eager step, deterministic, falling back for what it
does not take, and refused with a clear error where it cannot be built."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from smmf import SMMF, cpp_backend, functional
from step_helpers import assert_bad_step_is_skipped, assert_same, run

pytestmark = pytest.mark.skipif(not cpp_backend.available(), reason=cpp_backend.unavailable_reason())

# (421, 421): sign rows of 53 bytes, so each plane runs through the widest vector loop (32), the 16-wide
# one and single elements, and its last plane is shorter (cpp_step.cpp's step_row)
SHAPES = [(64, 48), (97, 13), (0, 4), (1021,), (300, 200), (3, 5, 7), (421, 421)]


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_bf16_parameters_equal_eager(stochastic: bool) -> None:
    """Same float32 arithmetic in the same order and the same random bits for stochastic rounding: the
    first step (factors still zero) is bitwise equal; later ones read factors summed in another order
    (double here), so a rare element lands one bf16 ulp apart."""
    for steps, unequal in ((1, 0), (5, 1e-3)):
        mine, _ = run(SHAPES, steps=steps, dtype=torch.bfloat16, backend="cpp", stochastic_rounding=stochastic)
        eager, _ = run(SHAPES, steps=steps, dtype=torch.bfloat16, backend="eager", stochastic_rounding=stochastic)
        for a, b in zip(mine, eager, strict=True):
            assert (a != b).float().mean().item() <= unequal if a.numel() else True
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs", [{}, {"sign_bits": 8}, {"beta": None, "growth_rate": None}], ids=["1-bit", "8-bit", "no-momentum"]
)
def test_every_sign_layout_equals_eager_through_every_loop(kwargs: dict) -> None:
    """float32, each of step_row's loops (the widest vectors, vectors of 16, single elements, a shorter
    last plane) in each sign layout."""
    shapes = [(421, 421), (300, 200), (97, 13)]
    assert_same(run(shapes, backend="cpp", **kwargs), run(shapes, backend="eager", **kwargs))


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """``threads`` torch threads within the block, whatever the process was given (scripts/test.sh gives one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_on_threads(threads: int) -> tuple[list[nn.Parameter], SMMF]:
    """A C++ run on ``threads`` threads."""
    with _torch_threads(threads):
        return run(SHAPES, backend="cpp")


def test_two_runs_are_bitwise_equal_and_thread_counts_agree_to_rounding() -> None:
    first, second = _run_on_threads(2), _run_on_threads(2)
    assert_same(first, second, rtol=0, atol=0)
    assert_same(_run_on_threads(1), first)


def test_a_tensor_split_over_threads_is_checked_as_one() -> None:
    """Each of 2 threads checks its own rows of a (300, 256) gradient before stepping them: a NaN in
    either half skips the whole tensor, and so do squares of 1e19 that overflow fp32 only once the two
    halves' sums are added (2e38 each, 4e38 together), while 2e38 in one half steps."""
    with _torch_threads(2):
        for at in ((10, 3), (250, 3)):
            assert_bad_step_is_skipped("cpp", torch.float32, float("nan"), shape=(300, 256), at=at, steps=6)
        for rows, skipped in (((0,), {}), ((0, 299), {0: 1})):
            p = nn.Parameter(torch.ones(300, 256))
            opt = SMMF([p], lr=0.1, backend="cpp")
            p.grad = torch.zeros_like(p)
            p.grad[list(rows), :2] = 1e19
            with pytest.warns(RuntimeWarning) if skipped else contextlib.nullcontext():
                opt.step()
                assert opt.skipped_steps() == skipped
            assert torch.equal(p, torch.ones(300, 256)) == bool(skipped)


def test_what_it_does_not_take_goes_to_the_torch_backends() -> None:
    """fp16 parameters and dense vectors fall back, and still equal eager; a channels-last weight is
    stepped in a contiguous copy."""
    for kwargs in ({"dtype": torch.float16}, {"vector_reshape": False}):
        assert_same(run(SHAPES, backend="cpp", **kwargs), run(SHAPES, backend="eager", **kwargs), rtol=2e-3)
    results = []
    for backend in ("cpp", "eager"):
        torch.manual_seed(0)
        weight = nn.Parameter(torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last))
        bias = nn.Parameter(torch.randn(40, 30))
        opt = SMMF([weight, bias], lr=0.01, backend=backend)
        for _ in range(3):
            weight.grad = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
            bias.grad = torch.randn(40, 30)
            opt.step()
        results.append((weight.detach().clone(), bias.detach().clone(), opt.state[weight]["step"].item()))
    torch.testing.assert_close(*results)


def _replay_with_changes(backend: str) -> tuple[list[nn.Parameter], SMMF]:
    """Steps through what makes the C++ kernel's kept plan stale: a parameter without a gradient, a
    parameter moved to new memory, state tensors replaced by load_state_dict, a skipped step."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(s)) for s in ((64, 48), (97, 13), (30,))]
    opt = SMMF(params, lr=0.01, backend=backend)
    gen = torch.Generator().manual_seed(1)
    for step in range(7):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        if step == 2:
            params[1].grad = None
        if step == 3:
            params[0].data = params[0].data.clone()
        if step == 4:
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        if step == 5:
            params[2].grad[0] = float("nan")
        opt.step()
    return params, opt


def test_the_kept_plan_follows_what_changes_between_steps(recwarn: pytest.WarningsRecorder) -> None:
    """The kernel keeps each bucket's descriptors between steps and rewrites only the gradients'
    addresses; whatever else changes, it steps as eager does, counters included."""
    mine, eager = _replay_with_changes("cpp"), _replay_with_changes("eager")
    assert_same(mine, eager)
    assert mine[1].skipped_steps() == eager[1].skipped_steps() == {2: 1}
    assert [mine[1].state[p]["step"].item() for p in mine[0]] == [7.0, 6.0, 6.0]


@pytest.mark.parametrize("saved", [3, 3.0, torch.tensor([3.0], dtype=torch.float64)], ids=["int", "float", "f64"])
def test_a_checkpoint_skipped_counter_of_another_type_is_converted(saved: object) -> None:
    """The kernel advances the skipped-step counter through its address, so one saved as a number or
    as a float64 tensor becomes a float32 scalar before the step."""
    p = nn.Parameter(torch.ones(16, 16))
    opt = SMMF([p], lr=0.1, backend="cpp")
    p.grad = torch.ones(16, 16)
    opt.step()
    state = opt.state_dict()
    state["state"][0]["skipped"] = saved
    opt.load_state_dict(state)
    p.grad = torch.full((16, 16), float("inf"))
    with pytest.warns(RuntimeWarning):
        opt.step()
        assert opt.skipped_steps() == {0: 4}
    assert opt.state[p]["skipped"].dtype == torch.float32 and opt.state[p]["step"].item() == 1


def test_an_unbuildable_kernel_is_refused_by_name_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpp_backend, "_build", lambda: (None, "g++ failed: no OpenMP"))
    p = nn.Parameter(torch.zeros(4, 4))
    opt = SMMF([p], backend="cpp")
    p.grad = torch.ones(4, 4)
    with pytest.raises(ValueError, match=r"backend.*'cpp'.*no OpenMP"):
        opt.step()
    assert torch.equal(p, torch.zeros(4, 4))
    assert functional.resolve_backend("auto", None, torch.device("cpu")) in ("inductor", "eager")


def test_the_kernel_builds_into_the_cache_directory(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMMF_CACHE_DIR", str(tmp_path))
    library, reason = cpp_backend._build.__wrapped__()
    assert library is not None, reason
    assert [path.suffix for path in tmp_path.iterdir()] == [".so"]  # the temporary build folder is gone
