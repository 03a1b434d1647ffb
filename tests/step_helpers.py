"""Runs a few SMMF steps on random gradients and compares two runs (shared by the backend tests)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from smmf import SMMF
from smmf.matricization import square_matricize
from smmf.signpack import row_bytes


def run(
    shapes: list[tuple[int, ...]], steps: int = 4, dtype: torch.dtype = torch.float32, **kwargs: Any
) -> tuple[list[nn.Parameter], SMMF]:
    """``steps`` steps of SMMF(lr=0.01, **kwargs) on parameters of ``shapes`` with seeded gradients."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(s, dtype=torch.float32).to(dtype)) for s in shapes]
    opt = SMMF(params, **{"lr": 0.01, **kwargs})
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        opt.step()
    return params, opt


def assert_same(
    first: tuple[list[nn.Parameter], SMMF],
    second: tuple[list[nn.Parameter], SMMF],
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Parameters and every state tensor equal to the tolerances; signs may differ where M is within
    rounding of 0 (at most 1% of them)."""
    (pf, of), (pe, oe) = first, second
    for a, b in zip(pf, pe, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
        sa, sb = of.state[a], oe.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            if key == "sign":
                mismatch = (sa[key] != sb[key]).float().mean().item() if sa[key].numel() else 0.0
                assert mismatch < 0.01, (key, mismatch)
            elif isinstance(sa[key], torch.Tensor):
                torch.testing.assert_close(sa[key], sb[key], rtol=rtol, atol=atol)
            else:
                assert sa[key] == sb[key], key


def format1_state_dict(opt: SMMF) -> dict[str, Any]:
    """A state dict as the previous release wrote it: no ``state_format`` in its groups, and packed signs of widths
    m % 8 != 0 flat across rows (eight consecutive row-major elements a byte)."""
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        del group["state_format"]
    for index, state in saved["state"].items():
        sign = state.get("sign")
        if sign is None or sign.dtype != torch.uint8:
            continue
        p = opt.param_groups[0]["params"][index]
        n, m = square_matricize(p.numel())
        if m % 8 == 0:  # whole bytes per row: format 1 already packed these by rows
            continue
        bits = (
            ((sign.view(n, row_bytes(m), 1) >> torch.arange(8).view(1, 1, 8)) & 1).transpose(1, 2).reshape(n, -1)[:, :m]
        )
        flat = torch.nn.functional.pad(bits.reshape(-1), (0, (-n * m) % 8)).view(-1, 8)
        state["sign"] = (flat << torch.arange(8)).sum(-1).to(torch.uint8)
    return saved


def assert_format1_resume_is_exact(backend: str) -> None:
    """A run resumed from a format-1 checkpoint after 2 of 4 steps ends bitwise where the whole run does."""
    shapes = [(33, 12), (6, 5), (97,), (24, 16)]
    whole = run(shapes, steps=4, backend=backend)
    first = run(shapes, steps=2, backend=backend)
    saved = format1_state_dict(first[1])
    assert any(
        s["sign"].numel() != first[1].state[p]["sign"].numel()
        for p, s in zip(first[0], saved["state"].values(), strict=True)
    )
    params = [nn.Parameter(p.detach().clone()) for p in first[0]]
    opt = SMMF(params, lr=0.01, backend=backend)
    opt.load_state_dict(saved)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):  # replay the gradients the first two steps consumed
        for p in params:
            torch.randn(p.shape, generator=gen)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    for a, b in zip(params, whole[0], strict=True):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["sign"], whole[1].state[b]["sign"])


# (dtype, bad gradient value): a NaN, an inf, and an element whose square overflows fp32 (and bf16),
# and in fp16 whatever overflows to inf.
NON_FINITE_CASES = [
    (torch.float32, float("nan")),
    (torch.float32, float("inf")),
    (torch.float32, 1e20),
    (torch.bfloat16, 1e20),
    (torch.float16, float("inf")),
]


def assert_bad_step_is_skipped(
    backend: str,
    dtype: torch.dtype,
    bad: float,
    shape: tuple[int, ...] = (64, 48),
    at: tuple[int, ...] = (5, 7),
    steps: int = 25,
    memory_format: torch.memory_format = torch.contiguous_format,
    **kwargs: Any,
) -> None:
    """The issue's reproducer: a (64, 48) parameter, 25 steps of random gradients, one bad element (at
    ``at``) at step 3. That step leaves parameter and state unchanged and counts 1 skipped; the others
    train on (``steps`` > 4 of them in all). Parameters and gradients are laid out in ``memory_format``."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(shape).to(dtype).contiguous(memory_format=memory_format))
    other = nn.Parameter(torch.randn(shape).to(dtype))  # same shape: the batched path, where it applies
    opt = SMMF([p, other], lr=0.01, backend=backend, **kwargs)
    gen = torch.Generator().manual_seed(1)
    after_bad = None
    for step in range(steps):
        grad = torch.randn(shape, generator=gen)
        if step == 3:
            grad[at] = bad
            before = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items() if k != "skipped"}
        p.grad = grad.to(dtype).contiguous(memory_format=memory_format)
        other.grad = torch.randn(shape, generator=gen).to(dtype)
        opt.step()
        if step == 3:
            assert torch.equal(p, before[0])
            for key, value in before[1].items():
                assert torch.equal(opt.state[p][key], value), key
            after_bad = p.detach().clone()
    state = opt.state[p]
    assert state["skipped"].item() == 1 and state["step"].item() == steps - 1
    assert opt.state[other]["skipped"].item() == 0 and opt.state[other]["step"].item() == steps
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    moved = (p.detach() != after_bad).float().mean().item()  # the other elements kept training
    assert moved > (0.9 if dtype == torch.float32 else 0.5), moved  # (half dtypes round small updates away)
    with pytest.warns(RuntimeWarning, match="skipped 1 step"):
        assert opt.skipped_steps() == {0: 1}


def tiny_model(seed: int = 0) -> nn.Module:
    """A two-layer regression net (the contract tests' model), seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 12), nn.Tanh(), nn.Linear(12, 3), nn.Flatten(0))


def train_tiny(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    """``steps`` steps on seeded random inputs, minimising the mean square of the output."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 7, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


class CountingKernel:
    """A Triton kernel that appends its name to ``launched`` at every launch (``kernel[grid]``)."""

    def __init__(self, kernel: Any, launched: list[str]) -> None:
        self.kernel, self.launched = kernel, launched

    def __getitem__(self, grid: Any) -> Any:
        self.launched.append(self.kernel.__name__)
        return self.kernel[grid]
