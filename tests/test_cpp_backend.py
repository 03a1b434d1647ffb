"""The C++ backend (smmf.cpp_backend): equal to the eager step, deterministic, falling back for what it
does not take, and refused with a clear error where it cannot be built."""

from __future__ import annotations

import contextlib
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
        opt = SMMF([weight], lr=0.01, backend=backend)
        weight.grad = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
        opt.step()
        results.append(weight.detach().clone())
    torch.testing.assert_close(*results)


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
